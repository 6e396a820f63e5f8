"""Session stores behind one contract, chosen by URL."""
