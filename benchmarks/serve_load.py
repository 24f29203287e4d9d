"""Load benchmark: many concurrent streaming chat clients against OpenAI-compatible
servers on 127.0.0.1 -- `moss serve` and its llama.cpp peers, on the same weights.

    python benchmarks/serve_load.py                                  # all servers, 64 clients
    python benchmarks/serve_load.py --concurrency 16,64 --json
    python benchmarks/serve_load.py --servers moss --overload        # overload check, ours only
    scripts/build_llama_peers.sh                                     # builds the peers first

Servers (each started here as a child process on a free port, waited for, then stopped):
  moss              `moss serve --model M --data-dir LOG_DIR/moss-serve-data`
                                                              ready: GET /health == 200
  llama-cpp-python  `PEERS/venv/bin/python -m llama_cpp.server --model GGUF --n_ctx 2048
                     --interrupt_requests False` (its default True ends a stream when a new
                     request comes in, so under load most streams come back with no content)
                                                              ready: GET /v1/models == 200
  llama-server      `PEERS/bin/llama-server -m GGUF --parallel 16 -c 16*CTX --cont-batching`
                                                              ready: GET /health == 200
A server whose program is missing (peers not built, no GGUF) is reported and skipped.

Clients: N concurrent clients (per --concurrency level), each sending
--requests-per-client streaming chat completions one after another (`stream: true`,
`stream_options.include_usage`, temperature 0 and a fixed seed), with short English and
Chinese prompts. The HTTP/1.1 client and the SSE parser are written here on asyncio
streams (no third-party client). Per request: time to first content token (TTFT), the
gaps between content chunks (inter-token latency, ITL), completion tokens (from the
usage chunk where the server sends one, else the number of content chunks), and the
status or failure kind. Per server and level: p50/p99 TTFT, p50 ITL, aggregate
completion tokens/s (all completion tokens / wall time of the level), errors, the
server's peak RSS (VmHWM of the child process), and ratios ours/peer for servers
measured in the same run.

--overload (ours only): --overload-factor x max(--concurrency) clients at once, one short
request each. Every status must be 200, 429 or 503; afterwards GET /health must be 200
and a normal request must succeed. Exit status 1 when any of that fails.

Bounds: --time-limit seconds of load per server (unfinished requests are cancelled and
counted as `time_limit`), --request-timeout per request, --startup-timeout per server.
The client shares the CPU with the server; on a small machine, figures are relative.
Thread defaults differ: llama-cpp-python takes half the cores, llama-server all of them,
and llama.cpp's spinning thread barrier degrades badly when another process holds one
of those cores; --threads N sets both peers alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SERVERS = ("moss", "llama-cpp-python", "llama-server")

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a prime number is in one sentence.",
    "Write a haiku about the sea.",
    "How do plants make food from sunlight?",
    "Name two planets larger than Earth.",
    "What does a compiler do?",
    "Suggest a name for a small orange cat.",
    "中国的首都是哪里？",
    "请用一句话解释什么是人工智能。",
    "给我三个学习英语的建议。",
    "写一首关于春天的短诗。",
    "为什么天空是蓝色的？",
    "推荐一本适合初学者的编程书。",
    "How do you say 'thank you' in Chinese? 用中文怎么说“谢谢”？",
    "Translate to English: 今天天气很好，我们去公园散步吧。",
]


def default_peers_dir() -> Path:
    if os.environ.get("PEERS_DIR"):
        return Path(os.environ["PEERS_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mosslm" / "peers"


def default_gguf() -> Path:
    if os.environ.get("MOSSLM_HOME"):
        home = Path(os.environ["MOSSLM_HOME"]).expanduser()
    else:
        home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mosslm"
    return home / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- HTTP/1.1 + SSE client


class HTTPError(Exception):
    pass


async def _open(port: int, method: str, path: str, body: dict | None):
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: mosslm-serve-load\r\n"
            f"Accept: */*\r\nConnection: close\r\n")
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    await writer.drain()
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        writer.close()
        raise HTTPError(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, reader, writer


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]):
    """Yield the response body as it arrives (chunked, Content-Length, or until close)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size)
            await reader.readexactly(2)
            yield chunk
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            chunk = await reader.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
    else:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            yield chunk


async def http_json(port: int, method: str, path: str, body: dict | None = None,
                    timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    async def go():
        status, headers, reader, writer = await _open(port, method, path, body)
        try:
            data = b"".join([c async for c in _body_chunks(reader, headers)])
        finally:
            writer.close()
        return status, headers, data
    return await asyncio.wait_for(go(), timeout)


@dataclass
class Result:
    status: int | None = None
    error: str | None = None  # None when the request succeeded
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    usage_tokens: bool = False
    retry_after: str | None = None


async def stream_chat(port: int, body: dict) -> Result:
    """One streaming chat completion; SSE `data:` events parsed by hand."""
    res = Result()
    t0 = time.perf_counter()
    writer = None
    try:
        status, headers, reader, writer = await _open(port, "POST", "/v1/chat/completions", body)
        res.status = status
        if status != 200:
            res.error = f"http_{status}"
            res.retry_after = headers.get("retry-after")
            async for _ in _body_chunks(reader, headers):
                pass
            return res
        buf = b""
        data_lines: list[bytes] = []
        done = False
        last = None
        chunks = 0
        async for chunk in _body_chunks(reader, headers):
            now = time.perf_counter()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.rstrip(b"\r")
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].lstrip(b" "))
                    continue
                if line or not data_lines:
                    continue  # comments, event:/id: fields, stray blank lines
                payload = b"\n".join(data_lines)
                data_lines = []
                if payload.strip() == b"[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                if "error" in event and not event.get("choices"):
                    res.error = "stream_error"
                    return res
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        chunks += 1
                        if last is None:
                            res.ttft = now - t0
                        else:
                            res.gaps.append(now - last)
                        last = now
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    res.tokens = int(usage["completion_tokens"])
                    res.usage_tokens = True
            if done:
                break
        if not res.usage_tokens:
            res.tokens = chunks
        if not done:
            res.error = "no_done"
        elif res.ttft is None:
            res.error = "no_content"
        return res
    except asyncio.CancelledError:
        raise
    except (ConnectionError, OSError) as e:
        res.error = f"conn_{type(e).__name__}"
        return res
    except (HTTPError, ValueError, asyncio.IncompleteReadError) as e:
        res.error = f"bad_response_{type(e).__name__}"
        return res
    finally:
        if writer is not None:
            writer.close()


# ---------------------------------------------------------------- server processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class ServerProc:
    def __init__(self, name: str, cmd: list[str], ready_path: str, port: int, log_path: Path):
        self.name, self.cmd, self.ready_path, self.port, self.log_path = name, cmd, ready_path, port, log_path
        self.proc: subprocess.Popen | None = None
        self.model_id: str | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode} before it was ready "
                                   f"(log: {self.log_path}):\n{self.log_tail()}")
            try:
                status, _, _ = await http_json(self.port, "GET", self.ready_path, timeout=5)
                if status == 200:
                    break
            except (OSError, asyncio.TimeoutError, HTTPError, ValueError):
                pass
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"not ready after {timeout:.0f} s (log: {self.log_path}):\n{self.log_tail()}")
        try:  # the model id to put in requests
            status, _, data = await http_json(self.port, "GET", "/v1/models", timeout=10)
            if status == 200:
                self.model_id = json.loads(data)["data"][0]["id"]
        except (OSError, asyncio.TimeoutError, HTTPError, ValueError, KeyError, IndexError):
            pass

    def log_tail(self, n: int = 15) -> str:
        try:
            self.log.flush()
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def peak_rss_mib(self) -> float | None:
        return peak_rss_mib(self.proc.pid) if self.proc and self.proc.poll() is None else None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.log.close()


def moss_command() -> list[str]:
    exe = Path(sys.executable).with_name("moss")
    if exe.exists():
        return [str(exe)]
    return [shutil.which("moss") or "moss"]


def server_command(name: str, args: argparse.Namespace, port: int) -> tuple[list[str], str] | str:
    """(command, readiness path), or the reason it cannot run."""
    peers = Path(args.peers_dir).expanduser()
    gguf = str(Path(args.gguf).expanduser())
    threads = ["--threads", str(args.threads)] if args.threads else []
    if name == "moss":
        cmd = moss_command()
        if not shutil.which(cmd[0]):
            return "the `moss` command was not found (run scripts/setup.sh)"
        if args.moss_args is None:  # a fresh serving database: no keys (an open server), no usage history
            extra = ["--data-dir", str(Path(args.log_dir) / "moss-serve-data")]
        else:
            extra = shlex.split(args.moss_args)
        return [*cmd, "serve", "--model", args.model, "--host", HOST, "--port", str(port), *extra], "/health"
    if not Path(gguf).is_file():
        return f"GGUF {gguf} not found (moss download smollm2, or --gguf)"
    if name == "llama-cpp-python":
        py = peers / "venv" / "bin" / "python"
        if not py.exists():
            return f"{py} not found (scripts/build_llama_peers.sh with PEERS_DIR={peers})"
        probe = subprocess.run([str(py), "-c", "import llama_cpp.server.app"], capture_output=True)
        if probe.returncode != 0:
            return f"llama_cpp.server does not import in {py}: {probe.stderr.decode()[-300:]}"
        cmd = [str(py), "-m", "llama_cpp.server", "--model", gguf, "--host", HOST, "--port", str(port),
               "--n_ctx", str(args.ctx_per_slot),
               # by default a new request cuts off the one streaming (an empty stream for it); queue instead
               "--interrupt_requests", "False"]
        if args.threads:
            cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
        return cmd, "/v1/models"
    if name == "llama-server":
        exe = peers / "bin" / "llama-server"
        if not exe.exists():
            exe = Path(shutil.which("llama-server") or exe)
        if not exe.exists():
            return f"{exe} not found (scripts/build_llama_peers.sh with PEERS_DIR={peers})"
        n = args.llama_server_parallel
        return [str(exe), "-m", gguf, "--host", HOST, "--port", str(port), "--parallel", str(n),
                "-c", str(n * args.ctx_per_slot), "--cont-batching", *threads], "/health"
    return f"unknown server {name!r}"


# ---------------------------------------------------------------- load runs


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def request_body(model_id: str, prompt: str, max_tokens: int, args: argparse.Namespace) -> dict:
    return {"model": model_id, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "temperature": args.temperature, "seed": args.seed}


async def load_run(srv: ServerProc, clients: int, per_client: int, max_tokens: int,
                   args: argparse.Namespace, deadline: float) -> tuple[list[Result], float, int]:
    """Run `clients` concurrent clients; returns (finished results, wall seconds, cancelled count)."""
    model_id = srv.model_id or "default"
    results: list[Result] = []

    async def one(body: dict) -> Result:
        try:
            return await asyncio.wait_for(stream_chat(srv.port, body), args.request_timeout)
        except asyncio.TimeoutError:
            return Result(error="timeout")

    async def client(i: int) -> None:
        for j in range(per_client):
            prompt = PROMPTS[(i * per_client + j) % len(PROMPTS)]
            results.append(await one(request_body(model_id, prompt, max_tokens, args)))

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    left = max(0.0, deadline - time.monotonic())
    _, pending = await asyncio.wait(tasks, timeout=left)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    cancelled = clients * per_client - len(results)
    return results, wall, cancelled


def summarize(name: str, clients: int, results: list[Result], wall: float, cancelled: int) -> dict:
    ok = [r for r in results if r.error is None]
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    if cancelled:
        errors["time_limit"] = cancelled
    ttft = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in ok)
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
    return {"server": name, "concurrency": clients, "requests": len(results) + cancelled, "ok": len(ok),
            "errors": errors, "n_errors": sum(errors.values()),
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "itl_p50_ms": ms(percentile(gaps, 50)), "itl_p99_ms": ms(percentile(gaps, 99)),
            "completion_tokens": tokens, "tokens_per_request": round(tokens / len(ok), 1) if ok else None,
            "usage_reported": all(r.usage_tokens for r in ok) if ok else None,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None}


async def overload_run(srv: ServerProc, args: argparse.Namespace, deadline: float) -> dict:
    clients = args.overload_factor * max(args.concurrency)
    results, wall, cancelled = await load_run(srv, clients, 1, args.overload_max_tokens, args, deadline)
    statuses: dict[str, int] = {}
    for r in results:
        key = str(r.status) if r.status is not None else (r.error or "none")
        if r.status == 200 and r.error is not None:
            key = f"200_{r.error}"
        statuses[key] = statuses.get(key, 0) + 1
    if cancelled:
        statuses["time_limit"] = cancelled
    bad = {k: v for k, v in statuses.items() if k not in ("200", "429", "503")}
    retry_after_missing = sum(1 for r in results if r.status in (429, 503) and not r.retry_after)
    try:
        health, _, _ = await http_json(srv.port, "GET", "/health", timeout=10)
    except (OSError, asyncio.TimeoutError, HTTPError, ValueError) as e:
        health = f"error {type(e).__name__}"
    after = None
    for _ in range(5):  # a normal request afterwards; honour Retry-After while the server drains
        after = await asyncio.wait_for(
            stream_chat(srv.port, request_body(srv.model_id or "default", PROMPTS[0], args.max_tokens, args)),
            args.request_timeout)
        if after.status in (429, 503):
            await asyncio.sleep(min(float(after.retry_after or 1), 10))
            continue
        break
    passed = (not bad and health == 200 and after is not None and after.error is None)
    return {"server": srv.name, "clients": clients, "max_tokens": args.overload_max_tokens,
            "wall_s": round(wall, 2), "statuses": statuses, "unexpected": bad,
            "retry_after_missing": retry_after_missing, "health_after": health,
            "request_after": "ok" if after is not None and after.error is None else
            (after.error if after is not None else "none"),
            "peak_rss_mib": srv.peak_rss_mib(), "passed": passed}


async def bench_server(name: str, args: argparse.Namespace, log_dir: Path) -> dict:
    port = free_port()
    spec = server_command(name, args, port)
    if isinstance(spec, str):
        return {"server": name, "skipped": spec}
    cmd, ready = spec
    srv = ServerProc(name, cmd, ready, port, log_dir / f"{name}.log")
    print(f"[{name}] starting: {' '.join(cmd)}", file=sys.stderr)
    out: dict = {"server": name, "command": cmd, "runs": []}
    t_start = time.monotonic()
    try:
        srv.start()
        try:
            await srv.wait_ready(args.startup_timeout)
        except RuntimeError as e:
            out["failed"] = f"startup: {e}"
            print(f"[{name}] {out['failed']}", file=sys.stderr)
            return out
        out["startup_s"] = round(time.monotonic() - t_start, 1)
        out["model_id"] = srv.model_id
        deadline = time.monotonic() + args.time_limit
        if not args.no_warmup:
            warm = await asyncio.wait_for(stream_chat(
                port, request_body(srv.model_id or "default", PROMPTS[0], 8, args)), args.request_timeout)
            if warm.error is not None:
                out["failed"] = f"warm-up request failed: {warm.error} (status {warm.status}); log tail:\n" \
                                f"{srv.log_tail()}"
                print(f"[{name}] {out['failed']}", file=sys.stderr)
                return out
        if args.overload:
            if name != "moss":
                out["skipped_overload"] = "overload runs against our server only"
            else:
                ov = await overload_run(srv, args, deadline)
                out["overload"] = ov
                print(f"[{name}] overload: {json.dumps(ov)}", file=sys.stderr)
        else:
            for clients in args.concurrency:
                if time.monotonic() >= deadline:
                    out["runs"].append({"server": name, "concurrency": clients, "skipped": "time limit"})
                    continue
                results, wall, cancelled = await load_run(
                    srv, clients, args.requests_per_client, args.max_tokens, args, deadline)
                s = summarize(name, clients, results, wall, cancelled)
                out["runs"].append(s)
                print(f"[{name}] {clients} clients: {json.dumps(s)}", file=sys.stderr)
        out["peak_rss_mib"] = srv.peak_rss_mib()
        if srv.proc.poll() is not None:
            out["failed"] = f"server exited with {srv.proc.returncode} during the run:\n{srv.log_tail()}"
    except asyncio.TimeoutError:
        out["failed"] = "a warm-up or check request timed out"
    finally:
        srv.stop()
    return out


def ratios(servers: list[dict]) -> list[dict]:
    by = {(r["server"], r["concurrency"]): r for s in servers for r in s.get("runs", []) if "ok" in r}
    out = []
    for peer in ("llama-cpp-python", "llama-server"):
        for (srv, c), ours in by.items():
            if srv != "moss" or (peer, c) not in by:
                continue
            theirs = by[(peer, c)]
            div = lambda a, b: round(a / b, 3) if a is not None and b else None  # noqa: E731
            out.append({"vs": peer, "concurrency": c,
                        "tokens_per_s": div(ours["tokens_per_s"], theirs["tokens_per_s"]),
                        "ttft_p50": div(ours["ttft_p50_ms"], theirs["ttft_p50_ms"]),
                        "ttft_p99": div(ours["ttft_p99_ms"], theirs["ttft_p99_ms"]),
                        "itl_p50": div(ours["itl_p50_ms"], theirs["itl_p50_ms"])})
    return out


def markdown(report: dict) -> str:
    f = lambda x: "-" if x is None else str(x)  # noqa: E731
    lines = ["| server | clients | requests | ok | errors | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
             "| tok/s | tok/req | wall s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for s in report["servers"]:
        if "skipped" in s:
            notes.append(f"- {s['server']}: skipped: {s['skipped']}")
            continue
        if "failed" in s:
            notes.append(f"- {s['server']}: failed: {s['failed'].splitlines()[0]}")
        rss = f"{s['peak_rss_mib']:.0f}" if s.get("peak_rss_mib") else "-"
        for r in s.get("runs", []):
            if "skipped" in r:
                notes.append(f"- {s['server']} at {r['concurrency']} clients: skipped ({r['skipped']})")
                continue
            errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
            lines.append(f"| {s['server']} | {r['concurrency']} | {r['requests']} | {r['ok']} | {errs} "
                         f"| {f(r['ttft_p50_ms'])} | {f(r['ttft_p99_ms'])} | {f(r['itl_p50_ms'])} "
                         f"| {f(r['tokens_per_s'])} | {f(r['tokens_per_request'])} | {r['wall_s']} | {rss} |")
        if "overload" in s:
            ov = s["overload"]
            notes.append(f"- overload ({s['server']}, {ov['clients']} clients, max_tokens {ov['max_tokens']}): "
                         f"statuses {ov['statuses']}, /health after: {ov['health_after']}, request after: "
                         f"{ov['request_after']}, 429/503 without Retry-After: {ov['retry_after_missing']}, "
                         f"peak RSS {f(ov['peak_rss_mib'] and round(ov['peak_rss_mib']))} MiB: "
                         f"{'PASS' if ov['passed'] else 'FAIL'}")
    out = "\n".join(lines) if len(lines) > 2 else ""
    if report["ratios"]:
        out += ("\n\n| ours / peer | clients | tok/s | TTFT p50 | TTFT p99 | ITL p50 |\n"
                "|---|---|---|---|---|---|\n")
        out += "\n".join(f"| moss / {r['vs']} | {r['concurrency']} | {f(r['tokens_per_s'])} | {f(r['ttft_p50'])} "
                         f"| {f(r['ttft_p99'])} | {f(r['itl_p50'])} |" for r in report["ratios"])
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, from {', '.join(SERVERS)}")
    p.add_argument("--concurrency", default="64", help="concurrent clients, comma-separated levels (default 64)")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2", help="model for `moss serve` (default smollm2)")
    p.add_argument("--gguf", default=str(default_gguf()), help="GGUF for the peers (default: the smollm2 file)")
    p.add_argument("--peers-dir", default=str(default_peers_dir()),
                   help="where scripts/build_llama_peers.sh put the peers (default $PEERS_DIR or "
                        "~/.cache/mosslm/peers)")
    p.add_argument("--ctx-per-slot", type=int, default=2048,
                   help="context per sequence: llama-cpp-python --n_ctx, llama-server -c is this x --parallel")
    p.add_argument("--llama-server-parallel", type=int, default=16)
    p.add_argument("--threads", type=int, help="threads for the llama.cpp peers (default: theirs)")
    p.add_argument("--time-limit", type=float, default=300, help="seconds of load per server (default 300)")
    p.add_argument("--request-timeout", type=float, default=120)
    p.add_argument("--startup-timeout", type=float, default=180)
    p.add_argument("--no-warmup", action="store_true", help="skip the one unmeasured request before a server's runs")
    p.add_argument("--overload", action="store_true", help="the overload check against our server instead of load runs")
    p.add_argument("--overload-factor", type=int, default=10)
    p.add_argument("--overload-max-tokens", type=int, default=8)
    p.add_argument("--moss-args", help="extra `moss serve` options (default: --data-dir LOG_DIR/moss-serve-data, "
                                       "a fresh serving database with no keys)")
    p.add_argument("--log-dir", help="server logs (default: a temporary folder, kept)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the tables")
    p.add_argument("--save", metavar="FILE.json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r} (choose from {', '.join(SERVERS)})")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    if args.overload:
        args.servers = [s for s in args.servers if s == "moss"] or ["moss"]
    return args


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed + 256)) if hard != resource.RLIM_INFINITY else max(soft, needed + 256)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peak = max(args.concurrency) * (args.overload_factor if args.overload else 1)
    raise_fd_limit(peak)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="serve_load-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    args.log_dir = str(log_dir)
    report = {"config": {k: v for k, v in vars(args).items()}, "log_dir": str(log_dir), "servers": []}
    for name in args.servers:  # one server at a time: they share the CPU
        report["servers"].append(asyncio.run(bench_server(name, args, log_dir)))
    report["ratios"] = ratios(report["servers"])
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(markdown(report))
        print(f"\nserver logs: {log_dir}")
    failed = any("overload" in s and not s["overload"]["passed"] for s in report["servers"])
    failed |= args.overload and not any("overload" in s for s in report["servers"])
    failed |= any("failed" in s for s in report["servers"])  # started but broke (absent servers only skip)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
