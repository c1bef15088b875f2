"""GUI grounding track: GUI-G² Gaussian rewards (arXiv 2507.15846) on a Qwen2-VL-style policy via trl.

Modules (import what you need; nothing heavy loads at package import):

* :mod:`~genalign.gui.rewards`  — trl reward functions: Gaussian point / coverage, format, point-in-box, IoU.
* :mod:`~genalign.gui.coords`   — ``smart_resize``, coordinate frames, parsing of model output.
* :mod:`~genalign.gui.screens`  — seeded synthetic screens in ScreenSpot / -v2 / -Pro formats.
* :mod:`~genalign.gui.data`     — benchmark loading, the GUI-G² prompt, dataset rows for trl.
* :mod:`~genalign.gui.evaluate` — ScreenSpot-family evaluator (macro and micro accuracy, wrong_format).
* :mod:`~genalign.gui.config`   — the ``gui:`` config section (:class:`GuiConfig`).
* :mod:`~genalign.gui.train`    — ``run(cfg)``: ``trl.GRPOTrainer`` with the GUI-G² preset.
* :mod:`~genalign.gui.cli`      — ``eval_main(argv)`` behind ``genalign eval``.
"""
