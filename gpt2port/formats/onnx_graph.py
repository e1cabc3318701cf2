"""GPT-2 as one ONNX graph with past key values, built node by node from the model config with
the onnx package's helpers: the decoder optimum exports and transformers.js runs.

Inputs: ``input_ids``, ``past_key_values.N.key/value`` [batch, heads, past, head width],
``attention_mask`` [batch, past + new], ``position_ids``. Outputs: ``logits``,
``present.N.key/value``. A past of length 0 runs the prompt; after it, one token at a time. The
weights are initializers under transformers' names (``transformer.h.0.attn.c_attn.weight``,
Conv1D's [in, out], multiplied as they are stored); the head is a ``Gemm`` with ``transB`` on the
token embedding (tied) or ``lm_head.weight``, so no transposed copy exists anywhere.
"""

from __future__ import annotations

import math

from ..config import attention_scale

OPSET = 17  # LayerNormalization; onnxruntime 1.14+, onnxruntime-web and -node run it
INT64, BOOL = 7, 9
PREFIX = "transformer."


def gelu_tanh(graph, x):
    cube = graph.op("Mul", x, graph.op("Mul", x, x))
    inner = graph.op("Mul", graph.op("Add", x, graph.op("Mul", cube, graph.const(0.044715))),
                     graph.const(math.sqrt(2 / math.pi)))
    return graph.op("Mul", graph.op("Mul", x, graph.const(0.5)),
                    graph.op("Add", graph.op("Tanh", inner), graph.const(1.0)))


def gelu_exact(graph, x):
    erf = graph.op("Erf", graph.op("Mul", x, graph.const(1 / math.sqrt(2))))
    return graph.op("Mul", graph.op("Mul", x, graph.const(0.5)),
                    graph.op("Add", erf, graph.const(1.0)))


ACTIVATIONS = {
    "gelu_fast": gelu_tanh,
    "quick_gelu": lambda graph, x: graph.op("Mul", x, graph.op(
        "Sigmoid", graph.op("Mul", x, graph.const(1.702)))),
    "relu": lambda graph, x: graph.op("Relu", x),
    "silu": lambda graph, x: graph.op("Mul", x, graph.op("Sigmoid", x)),
    "tanh": lambda graph, x: graph.op("Tanh", x),
    "sigmoid": lambda graph, x: graph.op("Sigmoid", x),
    "mish": lambda graph, x: graph.op("Mul", x, graph.op("Tanh", graph.op("Softplus", x))),
    "relu6": lambda graph, x: graph.op("Clip", x, graph.const(0.0), graph.const(6.0)),
    "linear": lambda graph, x: graph.op("Identity", x),
}


class Graph:
    """Nodes being added, each output named once; constants in the graph's float type."""

    def __init__(self, helper, numpy_type):
        self.helper, self.numpy_type, self.nodes, self.count = helper, numpy_type, [], 0

    def op(self, kind: str, *inputs: str, output: str | None = None, **attributes) -> str:
        self.count += 1
        output = output or f"/{kind}_{self.count}"
        self.nodes.append(self.helper.make_node(kind, list(inputs), [output], **attributes))
        return output

    def ops(self, kind: str, inputs: list[str], count: int, **attributes) -> list[str]:
        self.count += 1
        outputs = [f"/{kind}_{self.count}_{index}" for index in range(count)]
        self.nodes.append(self.helper.make_node(kind, inputs, outputs, **attributes))
        return outputs

    def const(self, value, integer: bool = False) -> str:
        import numpy as np
        from onnx import numpy_helper

        array = np.asarray(value, dtype=np.int64 if integer else self.numpy_type)
        self.count += 1
        name = f"/const_{self.count}"
        self.nodes.append(self.helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(array, name)))
        return name


def build(config: dict, *, half: bool, tied: bool) -> tuple[bytes, bytes]:
    """The serialized ModelProto without its graph, and the GraphProto without initializers,
    of a model of ``config`` (``half``: float16 weights, cache and logits; ``tied``: the head is
    the token embedding)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    float_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    graph = Graph(helper, np.float16 if half else np.float32)
    layers, heads = config["number_of_layers"], config["number_of_heads"]
    width = config["embedding_dimension"]
    head_width, rows = width // heads, config["padded_vocab_size"]
    total = "past_sequence_length + sequence_length"
    cache = ["batch_size", heads, "past_sequence_length", head_width]
    inputs = [helper.make_tensor_value_info("input_ids", INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", float_type,
                                             ["batch_size", "sequence_length", rows])]
    for layer in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{layer}.{kind}", float_type, cache))
            outputs.append(helper.make_tensor_value_info(
                f"present.{layer}.{kind}", float_type, ["batch_size", heads, total, head_width]))
    inputs += [helper.make_tensor_value_info("attention_mask", INT64, ["batch_size", total]),
               helper.make_tensor_value_info("position_ids", INT64,
                                             ["batch_size", "sequence_length"])]

    # which key each new query may see: causal within the window, and the mask's ones
    new = graph.op("Shape", "input_ids", start=1, end=2)
    seen = graph.op("Shape", "attention_mask", start=1, end=2)
    past = graph.op("Sub", seen, new)
    squeeze = graph.const([0], integer=True)
    query_at = graph.op("Range", graph.op("Squeeze", past, squeeze),
                        graph.op("Squeeze", seen, squeeze), graph.const(1, integer=True))
    key_at = graph.op("Range", graph.const(0, integer=True), graph.op("Squeeze", seen, squeeze),
                      graph.const(1, integer=True))
    causal = graph.op("LessOrEqual", graph.op("Unsqueeze", key_at, graph.const([0], True)),
                      graph.op("Unsqueeze", query_at, graph.const([1], True)))
    padding = graph.op("Unsqueeze", graph.op("Cast", "attention_mask", to=BOOL),
                       graph.const([1, 2], True))
    allowed = graph.op("And", causal, padding)  # [batch, 1, new, past + new]
    hidden_out = np.finfo(graph.numpy_type).min  # finite: a row with nothing to see stays a number

    def name(tensor: str) -> str:
        return tensor if tensor == "lm_head.weight" else PREFIX + tensor

    def norm(x: str, prefix: str) -> str:
        return graph.op("LayerNormalization", x, name(f"{prefix}.weight"), name(f"{prefix}.bias"),
                        axis=-1, epsilon=config["layer_norm_epsilon"])

    def linear(x: str, prefix: str) -> str:
        return graph.op("Add", graph.op("MatMul", x, name(f"{prefix}.weight")),
                        name(f"{prefix}.bias"))

    split_heads = graph.const([0, 0, heads, head_width], integer=True)
    merge_heads = graph.const([0, 0, width], integer=True)
    activation = (ACTIVATIONS[config["activation"]] if config["activation"] != "gelu" else
                  gelu_exact if config["gelu_approximation"] == "none" else gelu_tanh)
    x = graph.op("Add", graph.op("Gather", name("wte.weight"), "input_ids"),
                 graph.op("Gather", name("wpe.weight"), "position_ids"))
    for layer in range(layers):
        block = f"h.{layer}"
        query, key, value = graph.ops("Split", [linear(norm(x, f"{block}.ln_1"),
                                                       f"{block}.attn.c_attn"),
                                                graph.const([width] * 3, integer=True)], 3,
                                      axis=-1)
        per_head = [graph.op("Transpose", graph.op("Reshape", each, split_heads),
                             perm=[0, 2, 1, 3]) for each in (query, key, value)]
        keys = graph.op("Concat", f"past_key_values.{layer}.key", per_head[1], axis=2,
                        output=f"present.{layer}.key")
        values = graph.op("Concat", f"past_key_values.{layer}.value", per_head[2], axis=2,
                          output=f"present.{layer}.value")
        scores = graph.op("Mul", graph.op("MatMul", per_head[0], graph.op(
            "Transpose", keys, perm=[0, 1, 3, 2])), graph.const(attention_scale(config, layer)))
        weights = graph.op("Softmax", graph.op("Where", allowed, scores,
                                               graph.const(hidden_out)), axis=-1)
        context = graph.op("Reshape", graph.op("Transpose", graph.op("MatMul", weights, values),
                                               perm=[0, 2, 1, 3]), merge_heads)
        x = graph.op("Add", x, linear(context, f"{block}.attn.c_proj"))
        expanded = activation(graph, linear(norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc"))
        x = graph.op("Add", x, linear(expanded, f"{block}.mlp.c_proj"))
    x = graph.op("Reshape", norm(x, "ln_f"), graph.const([-1, width], integer=True))
    head = name("wte.weight") if tied else "lm_head.weight"
    logits = graph.op("Gemm", x, head, transB=1)
    shape = graph.op("Concat", graph.op("Shape", "input_ids"), graph.const([rows], True), axis=0)
    graph.op("Reshape", logits, shape, output="logits")

    body = helper.make_graph(graph.nodes, "gpt2", inputs, outputs)
    model = helper.make_model(body, producer_name="gpt2port",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    graph_bytes = body.SerializeToString()
    model.ClearField("graph")
    del onnx
    return model.SerializeToString(), graph_bytes
