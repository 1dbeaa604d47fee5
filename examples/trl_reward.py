"""TRL GRPO reward function backed by `arm serve`, kept for scripts that import it by this name; it is
arm_client.trl_reward (examples/arm_client.py: one or several replicas, API key, timeout, retries, batching).

    ARM_URLS=http://127.0.0.1:5000 ARM_API_KEY=... python train.py
    trainer = GRPOTrainer(model=..., reward_funcs=[arm_reward], ...)

A too-long item gets ARM_TOO_LONG_REWARD (default 0.0).
"""
from arm_client import trl_reward as arm_reward

__all__ = ["arm_reward"]
