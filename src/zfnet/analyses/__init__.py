"""The paper's analyses: each computes results with the engine and the models, saves its figures
and hands the report a `zfnet.report.Section`. Modules are imported where used (`from
zfnet.analyses.topk import mine_topk`), so that one analysis never pays for another's imports."""
