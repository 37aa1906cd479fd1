"""TwigVLM's twig training as a mode of the one trainer (``--train_twig True``; ``scripts/train_twig.sh``).

Only the twig learns: the model attaches a twig after base layer K initialised from base layers K+1..K+T (or keeps
the checkpoint's own twig of the same shape and continues it), every other weight is frozen, and the loss is the
shallow model's next-token cross-entropy (``LlavaLlamaForCausalLM.forward(objective="twig")``: base layers 1..K on
every token as plain LLaVA runs them, then the twig, its norm and head), as TwigVLM trains it. Nothing is pruned in
training; the schedule saved with the checkpoint (``--reduction``, e.g. ``twigvlm-64``) is the one it evaluates with.

A run that is not twig training on a checkpoint with a twig keeps the twig frozen: it was trained against the base
as it was, and the forward of a schedule that does not score with it never runs it (on every rank alike).
"""

from __future__ import annotations

import logging

from llava.model.reduction.config import ReductionConfig
from llava.model.twig import TwigConfigError, TwigSpec, check_twig_schedule

logger = logging.getLogger("llava.train")


def prepare_twig(model, red: ReductionConfig, model_args, training_args, error: type[Exception]) -> None:
    """Sets up (or freezes) the twig; raises ``error`` (the entry point's setup error) naming the flag."""
    if not model_args.train_twig:
        if model.twig is not None:
            model.twig.requires_grad_(False)
            logger.warning("the checkpoint's twig stays frozen in this run (it was trained against the base as it "
                           "was); retrain it afterwards with scripts/train_twig.sh")
        _check(red, model, error)
        return
    for flag, on in (("--tune_mm_mlp_adapter", model_args.tune_mm_mlp_adapter), ("--lora_enable", training_args.lora_enable),
                     ("--freeze_backbone", model_args.freeze_backbone)):
        if on:
            raise error(f"--train_twig True trains the twig alone (everything else is frozen); {flag} does not apply")
    try:
        spec = TwigSpec(model_args.twig_after_layer, model_args.twig_layers).validate_for(model.config.num_hidden_layers)
    except TwigConfigError as e:
        raise error(f"--twig_after_layer / --twig_layers: {e}") from None
    if model.twig is None:
        model.add_twig(spec)
    elif model.twig.spec != spec:
        raise error(f"{model_args.model_name_or_path} already has a twig of {len(model.twig.layers)} layers after layer "
                    f"{model.twig.after_layer}, not the {spec.num_layers} after layer {spec.after_layer} asked for; "
                    "train from the checkpoint without a twig, or ask for the same shape to continue it")
    else:
        logger.info("continuing the checkpoint's own twig (%d layers after layer %d)", spec.num_layers, spec.after_layer)
    _check(red, model, error)
    model.requires_grad_(False)
    model.twig.requires_grad_(True)
    trainable = sum(p.numel() for p in model.twig.parameters())
    logger.info("twig training: %d trainable parameters (the twig's %d layers, norm and head); the base is frozen",
                trainable, spec.num_layers)


def _check(red: ReductionConfig, model, error: type[Exception]) -> None:
    try:
        check_twig_schedule(red, model.twig)
    except TwigConfigError as e:
        raise error(str(e)) from None
