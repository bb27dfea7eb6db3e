"""A real HTTP server on 127.0.0.1 speaking /v1/chat/completions, answering by simple rules.

The "model" is deterministic so tests can predict every reply, but the transport is real: the official
`openai` client connects over TCP, sends its JSON, and parses an OpenAI-shaped response.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def rule_reply(prompt: str, counter: int) -> str:
    body = prompt.split("\n\n", 1)[-1]
    if prompt.startswith("Paraphrase"):
        return f'"In other words: {body}"'
    if m := re.match(r"Translate the following text into (\w+)", prompt):
        untagged = re.sub(r"^\[\w+\] ", "", body)
        return f"[{m.group(1)}] {untagged}"
    if prompt.startswith("Here are examples"):
        label = re.search(r"labelled '([^']+)'", prompt)
        return f"brand new request number {counter} about {label.group(1) if label else 'anything'}"
    if prompt.startswith("Here are some tasks"):
        # one copy of an existing seed (must be rejected), one near-copy of it (rejected), two new tasks
        return (
            "1. Write a haiku about the sea\n"
            "2. Write a haiku about the sea!\n"
            f"3. List {counter} prime numbers greater than one hundred\n"
            f"- Describe the history of the bicycle in {counter} sentences"
        )
    return f"Answer to: {prompt}"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length))
        server = self.server
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **request})  # type: ignore[attr-defined]
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        prompt = request["messages"][-1]["content"]
        content = rule_reply(prompt, len(server.requests))  # type: ignore[attr-defined]
        n_in, n_out = len(prompt.split()), len(content.split())
        reply = {"role": "assistant", "content": content}
        body = json.dumps(
            {
                "id": f"chatcmpl-{len(server.requests)}",  # type: ignore[attr-defined]
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request["model"],
                "choices": [{"index": 0, "message": reply, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@contextmanager
def chat_server() -> Iterator[tuple[str, list[dict]]]:
    """Yield (base_url, requests seen) for a server on a free port; stopped on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
