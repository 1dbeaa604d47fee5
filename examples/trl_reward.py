"""TRL GRPO reward function backed by `arm serve` (POST /v1/score).

    arm serve --model Qwen/Qwen2.5-0.5B-Instruct --rm concise=concise.arm.safetensors --port 5000
    trainer = GRPOTrainer(model=..., reward_funcs=[arm_reward], ...)

Standard-library HTTP only. A too-long item comes back as None; it gets 0.0 here.
"""
import json
import urllib.request

ARM_URL = "http://127.0.0.1:5000/v1/score"
API_KEY = None  # the content of --api-key-file, if the server was started with one


def arm_reward(prompts, completions, **kwargs):
    def text(x):  # conversational datasets give message lists; the last message is the answer
        return x if isinstance(x, str) else x[-1]["content"]

    items = [{"prompt": p if isinstance(p, str) else [m for m in p if m["role"] != "system"], "response": text(c)}
             for p, c in zip(prompts, completions)]
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {API_KEY}"} if API_KEY else {})}
    request = urllib.request.Request(ARM_URL, data=json.dumps({"items": items}).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=180) as response:
        results = json.load(response)["results"]
    return [r["reward"] if r["reward"] is not None else 0.0 for r in results]
