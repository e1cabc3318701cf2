"""GGUF export and import, checked with the gguf package's own reader and writer."""

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from checkpoints import write_layout
from safetensors.torch import load_file

from gpt2port import ConfigError, generate, load_pretrained, load_tokenizer
from gpt2port.conversion import convert
from gpt2port.text.tokenizer import BUNDLED

IDS = torch.arange(1, 30).view(1, 29)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = write_layout("hub", tmp_path_factory.mktemp("gguf") / "hub", vocab_size=50257,
                          eos_token_id=50256, bos_token_id=50256)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BUNDLED / name, folder / name)
    return folder


def field(reader, key):
    found = reader.fields[key]
    value = found.parts[found.data[0]]
    return bytes(value).decode() if found.types[0] == gguf.GGUFValueType.STRING else value[0]


def test_export_as_the_gguf_package_reads_it(source, tmp_path):
    reader = gguf.GGUFReader(convert(source, tmp_path / "out", to="gguf") / "model.gguf")
    assert field(reader, "general.architecture") == "gpt2"
    assert [field(reader, f"gpt2.{key}") for key in (
        "block_count", "context_length", "embedding_length", "feed_forward_length",
        "attention.head_count")] == [2, 64, 64, 256, 4]
    assert abs(field(reader, "gpt2.attention.layer_norm_epsilon") - 1e-5) < 1e-9
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 50257
    assert field(reader, "tokenizer.ggml.eos_token_id") == 50256
    names = {tensor.name for tensor in reader.tensors}
    per_block = {f"blk.{i}.{part}.{kind}" for i in range(2) for kind in ("weight", "bias")
                 for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up",
                              "ffn_down")}
    assert names == per_block | {"token_embd.weight", "position_embd.weight", "output.weight",
                                 "output_norm.weight", "output_norm.bias"}
    hub = load_file(source / "model.safetensors")
    tensors = {tensor.name: np.array(tensor.data) for tensor in reader.tensors}
    assert np.array_equal(tensors["blk.1.attn_qkv.weight"], hub["h.1.attn.c_attn.weight"].T)
    assert np.array_equal(tensors["output.weight"], hub["wte.weight"])


def test_round_trips_are_bit_exact_in_f32(source, tmp_path):
    back = convert(convert(source, tmp_path / "gguf", to="gguf"), tmp_path / "hf", to="hf")
    before, after = load_file(source / "model.safetensors"), load_file(back / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in after)
    again = convert(back, tmp_path / "gguf2", to="gguf")
    first = gguf.GGUFReader(tmp_path / "gguf" / "model.gguf").tensors
    second = {t.name: t for t in gguf.GGUFReader(again / "model.gguf").tensors}
    assert all(np.array_equal(t.data, second[t.name].data) for t in first)


@pytest.mark.parametrize("quantization, kind, bound", [
    ("f16", gguf.GGMLQuantizationType.F16, 0.01), ("bf16", gguf.GGMLQuantizationType.BF16, 0.05),
    ("q8_0", gguf.GGMLQuantizationType.Q8_0, 0.1)])
def test_f16_bf16_and_q8_0(source, tmp_path, quantization, kind, bound):
    out = convert(source, tmp_path / quantization, to="gguf", dtype=quantization)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out / "model.gguf").tensors}
    assert types["blk.0.ffn_up.weight"] == kind and types["blk.0.ffn_up.bias"] == (
        gguf.GGMLQuantizationType.F32)
    exact, rounded = load_pretrained(source), load_pretrained(out)
    with torch.no_grad():
        expected = exact(IDS)
        assert (rounded(IDS) - expected).abs().max() <= bound * expected.abs().max()


@pytest.mark.parametrize("quantization", ["bf16", "q8_0"])
def test_quantized_bytes_are_the_gguf_packages_own(source, tmp_path, quantization):
    """Each 2-D weight's stored bytes are what the gguf package's quantizer makes of it."""
    out = convert(source, tmp_path / quantization, to="gguf", dtype=quantization)
    f32 = convert(source, tmp_path / "f32", to="gguf", dtype="f32")
    kind = getattr(gguf.GGMLQuantizationType, quantization.upper())
    exact = {t.name: np.array(t.data) for t in gguf.GGUFReader(f32 / "model.gguf").tensors}
    stored = [t for t in gguf.GGUFReader(out / "model.gguf").tensors if t.tensor_type == kind]
    assert len(stored) >= 8
    for tensor in stored:
        expected = gguf.quants.quantize(exact[tensor.name], kind)
        assert np.array_equal(np.asarray(tensor.data).view(np.uint8),
                              expected.view(np.uint8)), tensor.name


def test_a_missing_output_weight_is_tied(source, tmp_path):
    exported = gguf.GGUFReader(convert(source, tmp_path / "out", to="gguf") / "model.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "no-output.gguf"), "gpt2")
    for key, value in (("block_count", 2), ("context_length", 64), ("embedding_length", 64),
                       ("head_count", 4)):
        getattr(writer, f"add_{key}")(value)
    writer.add_layer_norm_eps(1e-5)
    for tensor in exported.tensors:
        if tensor.name != "output.weight":
            writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = load_pretrained(tmp_path / "no-output.gguf")
    assert model.output_head.weight is model.token_embedding_table.weight
    with torch.no_grad():
        assert torch.equal(model(IDS), load_pretrained(source)(IDS))


def test_a_destination_ending_in_gguf_is_one_file(source, tmp_path):
    """llama.cpp users pass a file path (its converter's ``--outfile x.gguf``)."""
    path = convert(source, tmp_path / "gpt2-f16.gguf", to="gguf", dtype="f16")
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-f16.gguf"]
    reader = gguf.GGUFReader(path)
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 50257
    assert torch.equal(load_pretrained(path).token_embedding_table.weight,
                       load_pretrained(source).token_embedding_table.weight.half())


def test_a_source_with_only_tokenizer_json_keeps_its_tokenizer(source, tmp_path):
    """transformers 5's save_pretrained writes tokenizer.json alone: GGUF and OpenAI exports
    still carry the tokenizer, token for token."""
    from transformers import GPT2TokenizerFast

    folder = tmp_path / "saved"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("vocab.json", "merges.txt"))
    theirs = GPT2TokenizerFast.from_pretrained(str(BUNDLED))
    theirs.save_pretrained(folder)
    assert not (folder / "vocab.json").exists() and (folder / "tokenizer.json").exists()
    reader = gguf.GGUFReader(convert(folder, tmp_path / "model.gguf", to="gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    found = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    assert found == theirs.convert_ids_to_tokens(list(range(50257)))
    merges = reader.fields["tokenizer.ggml.merges"]
    assert bytes(merges.parts[merges.data[0]]).decode() == "Ġ t"
    openai = convert(folder, tmp_path / "openai", to="openai")
    assert json.loads((openai / "encoder.json").read_text(encoding="utf-8")) == theirs.get_vocab()
    assert load_tokenizer(openai).encode("Hello world") == theirs.encode("Hello world")


def test_q8_0_is_for_gguf_only(source, tmp_path):
    with pytest.raises(ConfigError, match="hf does not store q8_0"):
        convert(source, tmp_path / "out", to="hf", dtype="q8_0")


def test_llama_cpp_runs_the_export_as_gpt2port_does(full_size_hub_folder, tmp_path, capfd):
    """llama.cpp itself (through llama-cpp-python) on the f32 export of a 124M-shape model; it
    loads the tokenizer without the missing pre-tokenizer warning."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (.ci/run builds it from source; "
        "this test says so when that build failed)")
    from gpt2port.proof.figures import PROMPT

    model = load_pretrained(full_size_hub_folder)
    source = tmp_path / "source"  # the 124M-shape checkpoint with GPT-2's tokenizer beside it
    source.mkdir()
    files = {p.name: p for p in [BUNDLED / "vocab.json", BUNDLED / "merges.txt",
                                 *full_size_hub_folder.iterdir()]}
    for name, path in files.items():
        (source / name).symlink_to(path)
    path = convert(source, tmp_path / "gpt2.gguf", to="gguf")  # one file, as llama.cpp takes
    capfd.readouterr()
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, n_threads=2, verbose=True)
    log = capfd.readouterr().err
    assert "gpt2" in log and "missing pre-tokenizer" not in log and "DEGRADED" not in log
    llm.eval(list(PROMPT))
    theirs = np.array(llm.scores[: len(PROMPT)])
    with torch.no_grad():
        ours = model(torch.tensor([PROMPT]))[0].numpy()
    # llama.cpp's GELU reads an fp16 table, so logits agree to ~1e-3 here, not to fp32 rounding
    assert np.abs(theirs - ours).max() < 5e-3 * max(1.0, np.abs(ours).max())
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    llm.reset()
    tokens = []
    for token in llm.generate(list(PROMPT), temp=0.0, top_k=1):
        tokens.append(token)
        if len(tokens) == 20:
            break
    assert tokens == generate(model, torch.tensor([PROMPT]), 20)[0, len(PROMPT):].tolist()
