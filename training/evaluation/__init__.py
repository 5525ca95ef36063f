"""Offline evaluation: simulate routing policies exactly on recorded samples (router
thresholds, constant (member, n), verified chains with escalation), compare them with the
baselines at the same costs on upper convex hulls, report, and calibrate the policy per target.

Modules: ``outcomes`` (recorded samples, pickers, exact best-of-n), ``sweep`` (Algorithm 1's
exact threshold envelope, hulls, Table 1, APGR, AIQ), ``chains`` (verified chains and their
labels), ``policies`` (every runnable policy on a prompt set), ``calibration`` (choosing a
policy per target), ``baselines``, ``report``, ``execution`` (visible-example runs, cached),
``frozen`` (frozen-encoder heads), ``experiment`` (cross-validation and train/test tables),
``commands`` (``bestroute-train evaluate`` / ``calibrate``), ``shared_data``, ``from_store``."""
