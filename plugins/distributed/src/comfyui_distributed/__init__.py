"""comfyui-distributed: frontends and workers on many machines, sharing prompts and progress over AMQP."""
