"""Runs Hugging Face Optimum's ONNX export inside its own environment (scripts/optimum-env.sh): not a test.

    python tests/optimum_run.py '{"model": DIR, "out": DIR, "levels": ["O1", ...], "task": ..., "library": ...}'
    python tests/optimum_run.py '{"model": DIR, "out": DIR, "sentence_transformers": ["avx512_vnni", ...]}'

Writes OUT/plain/model.onnx (`optimum-cli export onnx`'s export) and OUT/<level>/model.onnx for each
optimization level (`optimum-cli onnxruntime optimize -O<n>`, Optimum's ORTOptimizer, on that export): one
process for all of a model's files, since importing Optimum costs seconds. With "sentence_transformers":
sentence-transformers' own ONNX backend instead (`SentenceTransformer(DIR, backend="onnx")`, saved to OUT/st,
whose onnx/ folder then holds model.onnx and, from `export_dynamic_quantized_onnx_model`, one
model_qint8_<config>.onnx per quantization configuration named: the files published beside models on the
Hugging Face Hub). tests/producers_corpus.py starts
it with the environment first on PYTHONPATH; the rest (torch, onnx, onnxruntime) comes from trtrun's.
"""

import json
import sys
import warnings

# transformers 4.x imports the `kernels` package when it is importable; the one beside transformers 5 in
# trtrun's environment needs a newer huggingface_hub than Optimum's. Optimum's export does not use it.
sys.modules["kernels"] = None


def sentence_transformers_onnx(spec: dict) -> None:
    from pathlib import Path

    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    out = Path(spec["out"]) / "st"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(spec["model"], backend="onnx", device="cpu")
        model.save(str(out))
        for config in spec["sentence_transformers"]:
            export_dynamic_quantized_onnx_model(model, config, str(out))


def main(spec: dict) -> None:
    from pathlib import Path

    if "sentence_transformers" in spec:
        sentence_transformers_onnx(spec)
        return

    from optimum.exporters.onnx import main_export

    out = Path(spec["out"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(spec["model"], output=out / "plain", task=spec.get("task", "feature-extraction"),
                    device="cpu", library_name=spec.get("library"), do_validation=False)
        if spec.get("levels"):
            from optimum.onnxruntime import ORTOptimizer
            from optimum.onnxruntime.configuration import AutoOptimizationConfig

            for level in spec["levels"]:
                optimizer = ORTOptimizer.from_pretrained(out / "plain", file_names=["model.onnx"])
                config = AutoOptimizationConfig.with_optimization_level(level)
                optimizer.optimize(save_dir=out / level, optimization_config=config)
                optimized = out / level / "model_optimized.onnx"
                if optimized.exists():
                    optimized.rename(out / level / "model.onnx")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
