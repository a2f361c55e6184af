"""A multi-window request under steady one-window traffic gets its answer, within its fair share of the engine.

The shipped model on a real uvicorn process. Before the fix, a job past its first window waited behind every
newcomer: with 8 looping clients a 5-window request got a 504 after 30 s. The bound is counted in windows
scheduled, not in seconds (latency belongs in bench/resilience.py --mode starvation).
"""

from __future__ import annotations

import threading

from model_export.data import load_squad
from tests.support.server import metric_value, running_server
from tests.support.tiny_model import KORQUAD_DEV

CLIENTS = 8
LONG_WINDOWS = 5


def test_a_five_window_request_among_eight_looping_clients_gets_its_answer():
    examples = load_squad(KORQUAD_DEV, "112:140")
    short = [e for e in examples if len(e.context) < 400][:CLIENTS]
    with running_server({}) as server:
        # a context of five windows: test paragraphs joined until the service cuts it into five
        long = examples[0]
        parts = [long.context]
        for e in examples[1:]:
            if e.context in parts:
                continue
            status, body = server.call("/answer", {"question": long.question, "context": "\n".join(parts)})
            assert status == 200
            if body["windows"] >= LONG_WINDOWS:
                break
            parts.append(e.context)
        context = "\n".join(parts)
        assert body["windows"] == LONG_WINDOWS, "the joined paragraphs jumped past five windows"

        stop = threading.Event()
        statuses: list[int] = []

        def loop(i: int) -> None:
            while not stop.is_set():
                status, body = server.call("/answer", {"question": short[i].question, "context": short[i].context})
                statuses.append(status)
                assert body.get("windows", 1) == 1

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            while len(statuses) < 2 * CLIENTS:  # every client is looping
                threading.Event().wait(0.05)
            before = metric_value(server.metrics(), "qa_batch_windows_sum")
            status, body = server.call("/answer", {"question": long.question, "context": context})
            after = metric_value(server.metrics(), "qa_batch_windows_sum")
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert status == 200, body
    assert body["windows"] == LONG_WINDOWS and body["answers"]
    # its five rounds hold at most one window of each client and one of its own, (8 + 1) * 5, plus the windows
    # already running or finishing when it arrived and when the metrics were read
    assert after - before <= (CLIENTS + 1) * LONG_WINDOWS + 2 * CLIENTS
    assert set(statuses) == {200}
