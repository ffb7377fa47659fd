"""`trtrun export`: a Hugging Face model folder or a named architecture to ONNX."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._ui import human_bytes, status
from ..types import ATTENTIONS, EXPORTERS
from .options import EXPORT_ARCHS, model_size_options, model_source, quiet_option


@click.command("export")
@click.argument("source", callback=model_source("a Hugging Face model folder or a GGUF file", EXPORT_ARCHS))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to write (default: <source name>.onnx in the current folder)")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="auto", show_default=True,
              help="torchscript: torch.onnx.export(dynamo=False); dynamo: the torch.export-based exporter; auto: "
                   "torchscript, then dynamo where torchscript fails on the model or writes a file that runs only "
                   "at the shape it traced")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17 torchscript, 18 dynamo; 14..20, dynamo 18..23; "
                                                    "auto uses the exporters that write it)")
@click.option("--attention", type=click.Choice(ATTENTIONS), default="eager", show_default=True,
              help="attention transformers traces: eager (matmul, softmax, matmul) or sdpa (torch's "
                   "scaled_dot_product_attention, transformers' default, so what most other exports hold)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the random weights (named architectures)")
@model_size_options
@quiet_option
def command(source, output, exporter, opset, attention, seed, allow_large, overrides, quiet):
    """Export SOURCE to ONNX with dynamic batch and sequence axes.

    SOURCE is a Hugging Face model folder (config.json + weights, e.g. .data/minilm), a GGUF file (or a
    folder holding one; its weights are dequantized to fp32, needs the gguf package), or a named
    architecture with random weights: bert-base, gpt2, llama, qwen2, mistral, qwen3, gpt-neox, mpnet, deberta-v2,
    modernbert (sizes
    overridable, e.g. --hidden-size 128 --layers 2 --heads 2 --kv-heads 1). Inputs input_ids,
    attention_mask (+ token_type_ids for BERT); output last_hidden_state. Needs torch and transformers
    (pip install 'trtrun[export]').
    """
    from ..export import export_model

    out = Path(output) if output else Path(Path(source.rstrip("/")).name + ".onnx")
    t0 = time.perf_counter()
    status(f"exporting {source} with the {exporter} exporter"
           + (f" (overrides: {', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""), quiet)
    path = export_model(source, out, exporter=exporter, opset=opset, overrides=overrides or None, seed=seed,
                        allow_large=allow_large, attention=attention, log=lambda m: status(m, quiet))
    path = Path(path)
    status(f"wrote {path} ({human_bytes(path.stat().st_size)}) in {time.perf_counter() - t0:.1f}s", quiet)
