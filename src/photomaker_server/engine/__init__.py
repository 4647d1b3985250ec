"""The PhotoMaker model side: checkpoint, ID encoder, pipeline, styles, tiny demo model.

Import submodules directly (``engine.service``, ``engine.pipeline``); this package does not import torch at import
time so that torch-free processes (the API server) can share ``options`` and ``styles``.
"""

import logging


class _QuietPilFallback(logging.Filter):
    """transformers warns that its CLIP processor falls back to PIL when torchvision is absent. We use the PIL
    processor on purpose (it matches the reference's preprocessing; see preprocess.py), so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_QuietPilFallback())


class _LoraKeysNotice(logging.Filter):
    """diffusers warns "No LoRA keys associated to CLIPTextModel..." when a LoRA has no text-encoder weights.
    PhotoMaker's LoRA adapts only the UNet, so at every start-up that warning would read like a fault. It is
    demoted to DEBUG (shown with ``-v``/debug logging on diffusers); every other diffusers warning is untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("No LoRA keys associated to"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("diffusers").isEnabledFor(logging.DEBUG)


for _name in ("diffusers.loaders.lora_base", "diffusers.loaders.peft", "diffusers.loaders.lora_pipeline"):
    logging.getLogger(_name).addFilter(_LoraKeysNotice())
