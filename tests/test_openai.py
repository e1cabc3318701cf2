"""OpenAI's TF checkpoint: the tensor-bundle reader and writer, proved by TensorFlow itself, and
the CRC-32C against an independent implementation (the ``crc32c`` package)."""

import json
import shutil

import numpy as np
import pytest
import torch
from checkpoints import hub_state_dict, load_reference, reference_model, write_hub_layout

from gpt2port import CheckpointError, ConfigError, load_pretrained
from gpt2port.conversion import convert
from gpt2port.formats import openai
from gpt2port.io.crc32c import crc32c
from gpt2port.io.tensor_bundle import data_path, decode_table, read_bundle, write_bundle
from gpt2port.text.tokenizer import BUNDLED

IDS = torch.arange(1, 30).view(1, 29)
NO_TENSORFLOW = "TensorFlow is not installed (pip install tensorflow-cpu; .ci/run installs it)"


def tensorflow():
    tf = pytest.importorskip("tensorflow", reason=NO_TENSORFLOW)
    return tf


def openai_tensors(model):
    """The reference model's weights under OpenAI's names and shapes, built from transformers'
    state dict by the naming picoGPT documents (not by gpt2port's table)."""
    named = {}
    for name, tensor in hub_state_dict(model).items():
        if name.endswith(".attn.bias") and "c_attn" not in name:
            continue  # a causal-mask buffer
        parts = name.split(".")
        if parts[0] == "h":
            parts = [f"h{parts[1]}", *parts[2:]]
        leaf = {"weight": "g" if "ln_" in name else "w", "bias": "b"}[parts[-1]]
        key = "/".join(["model", *parts[:-1]] + ([leaf] if parts[0] not in ("wte", "wpe") else []))
        named[key] = tensor.unsqueeze(0) if key.endswith("/w") else tensor
    return named


@pytest.mark.parametrize("length", [0, 1, 3, 255, 256, 257, 4099, (4 << 20) + 13, (13 << 20) + 5])
def test_crc32c_agrees_with_the_crc32c_package(length):
    reference = pytest.importorskip("crc32c", reason="the crc32c package is a test dependency")
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert crc32c(data) == reference.crc32c(data)
    assert crc32c(data[length // 3:], crc32c(data[:length // 3])) == reference.crc32c(data)
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value


def test_tensorflow_reads_our_bundle_with_several_index_blocks(tmp_path):
    tf = tensorflow()
    rng = np.random.default_rng(0)
    tensors = {f"model/h{i}/attn/c_attn/w": torch.from_numpy(
        rng.standard_normal((1, 8, 24), dtype=np.float32)) for i in range(40)}
    tensors.update({"half": torch.randn(3, 5).half(), "bf16": torch.randn(4).bfloat16(),
                    "scalar": torch.tensor(2.5), "ints": torch.arange(6, dtype=torch.int64)})
    prefix = tmp_path / "model.ckpt"
    write_bundle(prefix, tensors, block_bytes=256)
    blocks = list(decode_table((tmp_path / "model.ckpt.index").read_bytes()))
    assert len(blocks) == len(tensors) + 1  # the header under the empty key, then the tensors
    assert len(tensors) * 40 // 256 > 4  # so the index spans several data blocks
    reader = tf.train.load_checkpoint(str(prefix))
    assert set(reader.get_variable_to_shape_map()) == set(tensors)
    for name, tensor in tensors.items():
        theirs = reader.get_tensor(name)
        assert list(theirs.shape) == list(tensor.shape)
        assert np.array_equal(theirs.astype(np.float64), tensor.double().numpy()), name


def test_we_read_what_tensorflow_writes(tmp_path):
    tf = tensorflow()
    model = reference_model()
    tensors = openai_tensors(model)
    prefix = str(tmp_path / "model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(tensors),
                      shape_and_slices=[""] * len(tensors),
                      tensors=[t.numpy() for t in tensors.values()])
    (tmp_path / "hparams.json").write_text(
        '{"n_vocab": 512, "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_layer": 2}')
    ours = load_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(IDS), model(IDS).logits, atol=1e-5, rtol=0)


def test_export_matches_openai_names_and_tensorflow_reads_it(tmp_path):
    tf = tensorflow()
    model = reference_model()
    exported = convert(write_hub_layout(model, tmp_path / "hub"), tmp_path / "openai",
                       to="openai")
    reader = tf.train.load_checkpoint(str(exported / "model.ckpt"))
    expected = openai_tensors(model)
    assert set(reader.get_variable_to_shape_map()) == set(expected)
    for name, tensor in expected.items():
        assert np.array_equal(reader.get_tensor(name), tensor.numpy()), name


def test_hub_to_openai_to_hub_gives_transformers_identical_logits(tmp_path):
    source = write_hub_layout(reference_model(), tmp_path / "hub")
    back = convert(convert(source, tmp_path / "openai", to="openai"), tmp_path / "back", to="hf")
    with torch.no_grad():
        assert torch.equal(load_reference(source)(IDS).logits, load_reference(back)(IDS).logits)


@pytest.fixture
def exported(tmp_path):
    return convert(write_hub_layout(reference_model(), tmp_path / "hub"), tmp_path / "openai",
                   to="openai")


def test_a_corrupted_data_file_fails_its_crc(exported):
    data = data_path(exported / "model.ckpt")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, size unchanged
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001: tensor 'model/.*' fails "
                       r"its checksum \(stored crc32c 0x[0-9a-f]{8}, computed"):
        load_pretrained(exported)


def test_a_truncated_data_file_names_the_tensor_and_the_size(exported):
    data = data_path(exported / "model.ckpt")
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"ends at byte \d+, past the \d+-byte file"):
        load_pretrained(exported)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_index_is_refused(exported, damage):
    index = exported / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    if damage == "flip":
        raw[10] ^= 0xFF
    index.write_bytes(bytes(raw[:-20] if damage == "truncate" else raw))
    with pytest.raises(CheckpointError, match="model.ckpt.index: not a readable TensorFlow"):
        read_bundle(exported / "model.ckpt")


def test_bad_hparams_are_named(exported):
    (exported / "hparams.json").write_text('{"n_vocab": 512, "n_ctx": 64, "n_embd": "64"}')
    with pytest.raises(ConfigError, match="lacks n_head, n_layer; n_embd must be a positive integer"):
        load_pretrained(exported)


def test_an_untied_model_cannot_be_written_as_openai(tmp_path):
    from checkpoints import write_layout

    with pytest.raises(ConfigError, match="no output head of its own"):
        convert(write_layout("untied_head", tmp_path / "untied"), tmp_path / "out", to="openai")
    assert not (tmp_path / "out").exists()


def test_the_release_files_are_what_the_table_names(exported):
    names = set(read_bundle(exported / "model.ckpt"))
    assert names == {each.source[0] for each in openai.TABLE.expand(2)}
    assert len(names) == 2 + 12 * 2 + 2  # wte, wpe; 12 per block; ln_f


def test_entries_with_fields_of_the_wrong_wire_type_are_refused(exported):
    from gpt2port.io.tensor_bundle import HEADER, _field, encode_table

    wrong = {"header": [(b"", _field(1, b"x")), (b"model/wte", _field(1, 1))],
             "offset": [(b"", HEADER), (b"model/wte", _field(1, 1) + _field(4, b"x"))]}
    for entries in wrong.values():
        (exported / "model.ckpt.index").write_bytes(encode_table(entries))
        with pytest.raises(CheckpointError, match="malformed|shards"):
            read_bundle(exported / "model.ckpt")


def write_training_run(folder, steps):
    """A gpt-2-simple / OpenAI ``train.py`` run as TensorFlow's own ``Saver`` writes it:
    ``model-STEP.index/.data/.meta`` per step, the ``checkpoint`` file naming the last by its
    absolute path, ``hparams.json``, ``counter`` and the tokenizer files."""
    tf = tensorflow()
    folder.mkdir(parents=True)
    for step, model in steps.items():
        graph = tf.Graph()
        with graph.as_default():
            variables = {name: tf.compat.v1.get_variable(name, initializer=tensor.numpy())
                         for name, tensor in openai_tensors(model).items()}
            saver = tf.compat.v1.train.Saver(var_list=variables, max_to_keep=5)
            with tf.compat.v1.Session(graph=graph) as session:
                session.run(tf.compat.v1.global_variables_initializer())
                saver.save(session, str(folder / "model"), global_step=step)
    config = next(iter(steps.values())).config
    (folder / "hparams.json").write_text(json.dumps({
        "n_vocab": config.vocab_size, "n_ctx": config.n_positions, "n_embd": config.n_embd,
        "n_head": config.n_head, "n_layer": config.n_layer}))
    (folder / "counter").write_text(str(max(steps)))
    for theirs, ours in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        shutil.copy(BUNDLED / ours, folder / theirs)  # the same files under OpenAI's names
    return folder


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """Two steps of a run, written in one place and copied to another (the checkpoint file's
    absolute paths point at the first)."""
    steps = {500: reference_model(seed=1), 1000: reference_model(seed=2)}
    written = write_training_run(tmp_path_factory.mktemp("written") / "run1", steps)
    copied = tmp_path_factory.mktemp("copied") / "run1"
    shutil.copytree(written, copied)
    shutil.rmtree(written)
    return copied, steps


def test_a_training_run_loads_the_step_its_checkpoint_file_names(training_run):
    folder, steps = training_run
    assert "model-1000" in (folder / "checkpoint").read_text()
    model = load_pretrained(folder)
    with torch.no_grad():
        assert torch.allclose(model(IDS), steps[1000](IDS).logits, atol=1e-5)


def test_a_prefix_given_directly_loads_that_step(training_run):
    folder, steps = training_run
    model = load_pretrained(folder / "model-500")
    with torch.no_grad():
        assert torch.allclose(model(IDS), steps[500](IDS).logits, atol=1e-5)
    from gpt2port.proof.verification import verify_model

    assert verify_model(model, folder / "model-500", reference="numpy").passed


def test_several_steps_and_no_checkpoint_file_is_an_error_naming_them(training_run, tmp_path):
    folder, _ = training_run
    shutil.copytree(folder, tmp_path / "run")
    (tmp_path / "run" / "checkpoint").unlink()
    with pytest.raises(CheckpointError, match=r"2 checkpoints \(model-500, model-1000\)") as caught:
        load_pretrained(tmp_path / "run")
    assert caught.value.hint.endswith("model-1000")
    (tmp_path / "run" / "checkpoint").write_text('model_checkpoint_path: "model-2000"\n')
    with pytest.raises(CheckpointError, match="names model-2000, but"):
        load_pretrained(tmp_path / "run")
