"""Client for one or several `arm serve` replicas, for RL trainers. Standard library only: copy this file next to
your training script (or put examples/ on PYTHONPATH) and import it.

    from arm_client import ArmClient
    client = ArmClient("http://rm-0:5000,http://rm-1:5000", api_key="...", timeout=180, retries=4)
    rewards = client.score(prompts, responses)              # POST /v1/score, one reward per pair (None: too long)
    out = client.get_reward(queries, prompts)               # POST /get_reward, OpenRLHF's shape, merged

A batch is cut into contiguous chunks (at most `batch_size` items, and no more chunks than needed to give every
replica one), chunk k going first to replica k mod n, all chunks in flight at once. A chunk that fails with a
connection error, a timeout, 408, 429 or a 5xx (503: queue full or draining) is tried again on the *next* replica
after a backoff (Retry-After honoured), so a replica that dies mid-run costs its chunks one retry, not the step.
Other answers (400, 401, 413, ...) are the request's fault and raise ArmError at once. Results come back in input
order, whichever replica scored them: every replica with the same model, criterion and flags gives the same rewards.

For trainers that take a function, the module-level ones read their settings from the environment:
    ARM_URLS (comma-separated base URLs; default http://127.0.0.1:5000), ARM_API_KEY or ARM_API_KEY_FILE,
    ARM_TIMEOUT (seconds, default 180), ARM_RETRIES (default 4: 5 tries in all, as OpenRLHF's client),
    ARM_BACKOFF (seconds before the first retry, default 1), ARM_BATCH_SIZE (default 64), ARM_CRITERION (when the server has several), ARM_TOO_LONG_REWARD (default 0).
  - TRL (GRPOTrainer): reward_funcs=[trl_reward]
  - verl: custom_reward_function.path=arm_client.py, name=compute_score (or compute_score_batch with
    reward_model.reward_manager=batch); the prompt comes from extra_info["prompt"] (or "question"), which the
    dataset's preprocessing must fill.
"""
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

__all__ = ["ArmClient", "ArmError", "trl_reward", "compute_score", "compute_score_batch", "default_client"]

_ROUTES = ("/get_reward", "/v1/score", "/classify")


class ArmError(RuntimeError):
    """A request the servers refused (not worth another try), or a chunk that failed on every try."""


class ArmClient:
    def __init__(self, urls, api_key=None, timeout=180.0, retries=4, backoff=1.0, batch_size=64, criterion=None):
        """`urls`: a base URL, a comma-separated string of them, or a list (a trailing /get_reward, /v1/score or
        /classify is dropped, so OpenRLHF's --remote_rm_url values work as they are). `timeout`: seconds per try.
        `retries`: further tries of a failed chunk after the first, each on the next replica. `backoff`: seconds
        before the first retry, doubled after each (at most 30). `batch_size`: most items per request."""
        parts = urls.split(",") if isinstance(urls, str) else list(urls)
        self.urls = [_base_url(u) for u in parts if u.strip()]
        if not self.urls:
            raise ValueError("ArmClient: no server URL given")
        if retries < 0 or batch_size < 1 or timeout <= 0:
            raise ValueError("ArmClient: retries must be >= 0, batch_size >= 1, timeout > 0")
        self.api_key, self.timeout, self.retries = api_key, float(timeout), int(retries)
        self.backoff, self.batch_size, self.criterion = float(backoff), int(batch_size), criterion

    def score(self, prompts, responses, criterion=None):
        """One reward per (prompt, response) from /v1/score: P(Yes) under the criterion; None when too long."""
        return [r["reward"] for r in self.score_results(prompts, responses, criterion)]

    def score_results(self, prompts, responses, criterion=None):
        """The full /v1/score result per (prompt, response): reward, normalized, logits, tooLong, ..."""
        if len(prompts) != len(responses):
            raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        body = {"criterion": criterion or self.criterion} if (criterion or self.criterion) else {}
        answers = self._in_chunks(items, lambda chunk, k: self._post("/v1/score", {**body, "items": chunk}, k))
        return [result for answer in answers for result in answer["results"]]

    def get_reward(self, queries, prompts, labels=None):
        """OpenRLHF's /get_reward over the replicas: {"rewards", "scores", "extra_logs"} for the whole batch."""
        if len(queries) != len(prompts):
            raise ValueError(f"get_reward: {len(queries)} queries but {len(prompts)} prompts")
        rows = list(zip(queries, prompts, labels if labels is not None else [None] * len(queries)))
        path = "/get_reward" + (f"?criterion={self.criterion}" if self.criterion else "")

        def post(chunk, k):
            body = {"query": [q for q, _, _ in chunk], "prompts": [p for _, p, _ in chunk]}
            if labels is not None:
                body["labels"] = [l for _, _, l in chunk]
            return self._post(path, body, k)

        answers = self._in_chunks(rows, post)
        merged = {"rewards": [], "scores": [], "extra_logs": {}}
        for answer in answers:
            merged["rewards"] += answer["rewards"]
            merged["scores"] += answer.get("scores", answer["rewards"])
            for key, values in (answer.get("extra_logs") or {}).items():
                merged["extra_logs"].setdefault(key, []).extend(values)
        return merged

    def _in_chunks(self, rows, post):
        """`post` over contiguous chunks of `rows`, chunk k starting at replica k mod n, all at once; in order."""
        if not rows:
            return []
        size = min(self.batch_size, math.ceil(len(rows) / len(self.urls)))
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        with ThreadPoolExecutor(max_workers=min(len(chunks), 4 * len(self.urls))) as pool:
            futures = [pool.submit(post, chunk, k) for k, chunk in enumerate(chunks)]
            return [f.result() for f in futures]

    def _post(self, path, body, k=0):
        """POST chunk k to replica k mod n; on a retryable failure, to the next replica after a backoff."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        failures = []
        for attempt in range(self.retries + 1):
            url = self.urls[(k + attempt) % len(self.urls)] + path
            wait = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.load(response)
            except urllib.error.HTTPError as e:
                detail = _error_text(e)
                if e.code not in (408, 429) and e.code < 500:
                    raise ArmError(f"{url} answered {e.code}: {detail}") from None
                failures.append(f"{url}: {e.code} {detail}")
                wait = _retry_after(e)
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as e:
                failures.append(f"{url}: {getattr(e, 'reason', e)}")
            if attempt < self.retries:
                time.sleep(max(wait or 0.0, min(30.0, self.backoff * 2**attempt)))
        raise ArmError(f"{len(failures)} tries failed: " + "; ".join(failures))


def _base_url(url):
    url = url.strip().rstrip("/")
    for route in _ROUTES:
        if url.endswith(route):
            return url[: -len(route)]
    return url


def _error_text(error):
    try:
        return json.loads(error.read().decode()).get("error", "")
    except Exception:
        return error.reason or ""


def _retry_after(error):
    try:
        return min(60.0, float(error.headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


_default = None


def default_client():
    """The client the trainer functions use, built once from the ARM_* environment variables."""
    global _default
    if _default is None:
        key = os.environ.get("ARM_API_KEY")
        if not key and os.environ.get("ARM_API_KEY_FILE"):
            with open(os.environ["ARM_API_KEY_FILE"], encoding="utf-8") as f:
                key = f.read().strip()
        _default = ArmClient(
            os.environ.get("ARM_URLS", "http://127.0.0.1:5000"),
            api_key=key or None,
            timeout=float(os.environ.get("ARM_TIMEOUT", "180")),
            retries=int(os.environ.get("ARM_RETRIES", "4")),
            backoff=float(os.environ.get("ARM_BACKOFF", "1")),
            batch_size=int(os.environ.get("ARM_BATCH_SIZE", "64")),
            criterion=os.environ.get("ARM_CRITERION") or None,
        )
    return _default


def _too_long_reward():
    return float(os.environ.get("ARM_TOO_LONG_REWARD", "0"))


def _prompt_of(prompt):
    """A prompt as the server takes it: text, or the conversation's turns without system messages."""
    return prompt if isinstance(prompt, str) else [m for m in prompt if m["role"] != "system"]


def trl_reward(prompts, completions, **kwargs):
    """TRL reward function (GRPOTrainer(reward_funcs=[trl_reward])): one float per completion."""
    responses = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    rewards = default_client().score([_prompt_of(p) for p in prompts], responses)
    return [r if r is not None else _too_long_reward() for r in rewards]


def _verl_prompt(extra_info):
    prompt = (extra_info or {}).get("prompt") or (extra_info or {}).get("question")
    if not prompt:
        raise ValueError('compute_score: extra_info has no "prompt" (or "question"): the judge needs the question')
    return _prompt_of(prompt)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl's custom reward function (one sample): the criterion's reward for `solution_str`."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs):
    """verl's batch reward function (reward_manager=batch): one float per sample, the batch spread over replicas."""
    rewards = default_client().score([_verl_prompt(e) for e in extra_infos], list(solution_strs))
    return [r if r is not None else _too_long_reward() for r in rewards]
