"""Training pipeline: prompts -> samples -> scores -> labels -> reward model -> router.

Run with the ``bestroute-train`` CLI (``training/cli.py``). Models and losses come from
``bestroute_lc`` (one definition of each network for training and runtime).
"""
