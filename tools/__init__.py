"""Chat templates, tool schemas, streaming tool-call parsers and constrained-decoding glue."""
