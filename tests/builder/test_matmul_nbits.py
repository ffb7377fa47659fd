"""Block-quantized weights (onnxruntime's MatMulNBits, com.microsoft), dequantized at build time
(builder/dequantize.py): the dequantization against an independent float64 reading of the format, and whole
plans against onnxruntime running the quantized file itself."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")


def _reference_weight(packed, scales, zps, K, N, bits, bs):
    """The format read element by element (float64): code j of a block is bits (j % per) * bits.. of byte j // per."""
    blocks = -(-K // bs)
    per = 8 // bits
    packed = np.asarray(packed).reshape(N, blocks, -1)
    w = np.zeros((N, K))
    for n in range(N):
        for b in range(blocks):
            if zps is None:
                z = 2 ** (bits - 1)
            elif np.asarray(zps).dtype == np.uint8:
                row = np.asarray(zps).reshape(N, -1)[n]
                z = (int(row[b // per]) >> (bits * (b % per))) & (2 ** bits - 1)
            else:
                z = float(np.asarray(zps).reshape(N, blocks)[n, b])
            s = float(np.asarray(scales).reshape(N, blocks)[n, b])
            for j in range(bs):
                k = b * bs + j
                if k < K:
                    code = (int(packed[n, b, j // per]) >> (bits * (j % per))) & (2 ** bits - 1)
                    w[n, k] = (code - z) * s
    return w


@pytest.mark.parametrize("bits, bs, K, zero_points", [(4, 16, 40, "packed"), (4, 32, 64, None), (8, 16, 48, "packed"),
                                                      (4, 16, 32, "float")])
def test_nbits_weight_matches_the_format(bits, bs, K, zero_points):
    from trtrun.builder.dequantize import nbits_weight

    rng = np.random.default_rng(bits * 100 + K)
    N = 5
    blocks = -(-K // bs)
    packed = rng.integers(0, 256, (N, blocks, bs * bits // 8), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, N * blocks).astype(np.float32)
    zps = None
    if zero_points == "packed":
        zps = rng.integers(0, 256, N * -(-blocks * bits // 8), dtype=np.uint8)
    elif zero_points == "float":
        zps = rng.uniform(0, 2 ** bits - 1, N * blocks).astype(np.float32)
    got = nbits_weight(packed, scales, zps, K, N, bits, bs)
    want = _reference_weight(packed, scales, zps, K, N, bits, bs)
    assert got.shape == (N, K)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)  # float32 of (code - z) * s: one rounding


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory):
    from producers_corpus import export_new_arch

    return export_new_arch("llama", tmp_path_factory.mktemp("nbits") / "llama.onnx")


def _worst_cos(a, b, mask):
    v = mask != 0
    a, b = a[v].astype(np.float64), b[v].astype(np.float64)
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


@pytest.mark.parametrize("bits, block_size, symmetric", [(4, 32, True), (4, 16, False), (8, 32, False)])
def test_int4_decoder_file_against_onnxruntime_on_that_file(tmp_path, llama_onnx, bits, block_size, symmetric):
    """A tiny Llama export quantized by MatMulNBitsQuantizer: the fp32 plan computes what onnxruntime computes on
    the quantized file (its MatMulNBits dequantizes to fp32 as well: rounding only), the hybrid plan within
    hybrid's usual distance; header.source says what the file held."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    import trtrun
    from trtrun.reference import ReferenceBackend

    q = MatMulNBitsQuantizer(onnx.load(str(llama_onnx)), bits=bits, block_size=block_size,
                             is_symmetric=symmetric)
    q.process()
    path = tmp_path / "q.onnx"
    q.model.save_model_to_file(str(path), use_external_data_format=False)
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(path)).graph.node)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 1000, (3, 13))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    want = sess.run(None, {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in names})[0]
    for precision, bound in (("fp32", 0.9999999), ("hybrid", 0.9999)):
        plan = trtrun.build(path, precision=precision)
        assert plan.source["weights"] == f"int{bits}"
        assert any(f"MatMulNBits {bits}-bit weights" in c for c in plan.source["conversions"])
        got = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
        assert _worst_cos(got, want, mask) >= bound, precision


def test_inconsistent_or_unsupported_blocks_are_refused_by_name(tmp_path, llama_onnx):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    import trtrun
    from trtrun.errors import UnsupportedOpError

    q = MatMulNBitsQuantizer(onnx.load(str(llama_onnx)), bits=4, block_size=32, is_symmetric=True)
    q.process()
    for attr, value, message in (("N", None, "do not fit"), ("bits", 3, "bits 3")):
        m = onnx.ModelProto()
        m.CopyFrom(q.model.model)
        node = next(n for n in m.graph.node if n.op_type == "MatMulNBits")
        a = next(a for a in node.attribute if a.name == attr)
        a.i = a.i + 1 if value is None else value
        path = tmp_path / f"{attr}.onnx"
        onnx.save(m, str(path))
        with pytest.raises(UnsupportedOpError, match=rf"MatMulNBits.*{node.name}.*{message}"):
            trtrun.build(path, precision="hybrid")


@pytest.fixture(scope="module")
def llama_dynamo(tmp_path_factory):
    """The same model through the dynamo exporter (opset 18): the quantizer's QDQ and Gather forms move a file to
    opset 21, which an opset-17 file's ReduceMean attributes do not survive."""
    pytest.importorskip("onnxscript")
    from producers_corpus import export_new_arch

    return export_new_arch("llama", tmp_path_factory.mktemp("nbits-dyn") / "llama.onnx", exporter="dynamo")


def _fp32_plan_vs_ort(path, optimized=True):
    import onnxruntime as ort

    import trtrun
    from trtrun.reference import ReferenceBackend

    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 1000, (3, 13))
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    names = [i.name for i in sess.get_inputs()]
    want = sess.run(None, {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in names})[0]
    plan = trtrun.build(path, precision="fp32")
    got = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    return plan, _worst_cos(got, want, mask)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_embedding_table_gather_block_quantized(tmp_path, llama_dynamo, symmetric):
    """The quantizer's Gather form (GatherBlockQuantized: the embedding table in uint4 blocks) beside MatMulNBits:
    the table is dequantized into a Gather, and the fp32 plan computes what onnxruntime computes on the file."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(llama_dynamo)), bits=4, block_size=32, is_symmetric=symmetric,
                             op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)))
    q.process()
    path = tmp_path / "g.onnx"
    q.model.save_model_to_file(str(path), use_external_data_format=False)
    assert any(n.op_type == "GatherBlockQuantized" for n in onnx.load(str(path)).graph.node)
    plan, cos = _fp32_plan_vs_ort(path)
    assert any("1 GatherBlockQuantized 4-bit tables" in c for c in plan.source["conversions"])
    assert plan.source["weights"] == "int4" and cos >= 0.9999999


def test_int4_qdq_blocked_dequantize_linear(tmp_path, llama_dynamo):
    """The quantizer's QDQ form: DequantizeLinear of int4 constants with block_size (opset 21) folded into float
    weights. Against onnxruntime with its graph optimizations off (its default fuses DequantizeLinear + MatMul
    into MatMulNBits that quantizes activations to int8, ~1e-5 in cosine away from the file as written)."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(llama_dynamo)), bits=4, block_size=32, is_symmetric=True,
                             quant_format=QuantFormat.QDQ)
    q.process()
    path = tmp_path / "qdq.onnx"
    q.model.save_model_to_file(str(path), use_external_data_format=False)
    plan, cos = _fp32_plan_vs_ort(path, optimized=False)
    assert any("DequantizeLinear 4-bit weights" in c for c in plan.source["conversions"])
    assert plan.source["weights"] == "int4" and cos >= 0.9999999
