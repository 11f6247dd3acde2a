# dwakd workflow: data -> tokenizers -> teacher / student base -> per-pair inputs (teacher samples, vocabulary
# map) -> distillation runs -> evaluation -> tables -> attention tables (trained runs) -> figures.
# `snakemake --cores all` runs the profile named in config/config.yaml (`--config profile=NAME` for another).
# The Snakefile reads YAML only (no torch), so a dry run costs no more than Snakemake's start-up; the methods'
# options it checks the config against come from the registry once per code change (workflow/rules/common.smk).

from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")


configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/per_pair.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        expand(f"{P}/tables/{{table}}.{{ext}}", pair=PAIRS, table=list(DEFAULT_TABLES), ext=["md", "csv", "tex", "html"]),
        expand(rules.figures.output, pair=PAIRS),
        expand(f"{P}/tables/{{table}}.{{ext}}", pair=PAIRS, table=["significance", "efficiency"],
               ext=["md", "csv", "tex", "html"]),
        expand(f"{P}/tables/train_curves.csv", pair=PAIRS),
        expand(f"{P}/tables/same_vocab.{{ext}}", pair=SV_PAIR, ext=["md", "csv", "tex", "html"])
        if C.same_vocab_in_default(PROFILE) else [],


# The ablation table on its own (`snakemake --cores all ablation`): the default target builds it too unless the
# profile sets `ablation_in_all: false` (the embedded default does, to keep its run within 45 minutes).
rule ablation:
    input:
        expand(f"{P}/tables/ablation.{{ext}}", pair=PAIRS, ext=["md", "csv", "tex", "html"]) if "ablation" in TABLES
        else [],


# The on-policy table on its own (`snakemake --cores all on_policy`): off-policy runs beside their on-policy runs,
# which sample from the student inside training (slow on a CPU), and the training cost of those runs
# (on_policy_efficiency.*: the sampling's share); the default target builds the table too where the profile sets
# `on_policy_in_all: true` (tiny, which CI runs; its efficiency table then covers the on-policy run).
rule on_policy:
    input:
        expand(f"{P}/tables/{{table}}.{{ext}}", pair=PAIRS, table=["on_policy", "on_policy_efficiency"],
               ext=["md", "csv", "tex", "html"]) if "on_policy" in TABLES else [],


# The same-vocabulary table on its own (`snakemake --cores all same_vocab`): SFT, Vanilla KD and DSKD under the six
# divergences on the profile's `same_vocab_pair` (DSKD's Table 1), which trains those runs only; the default target
# builds it too unless the profile sets `same_vocab_in_all: false` (the embedded default does: 13 more trainings).
rule same_vocab:
    input:
        expand(f"{P}/tables/same_vocab.{{ext}}", pair=SV_PAIR, ext=["md", "csv", "tex", "html"]) if SAME_VOCAB else [],


onsuccess:
    for _p in ALL_PAIRS:
        _t = Path(pdir(_p)) / "tables"
        if _t.is_dir():
            print(f"dwakd: tables in {_t}/ ({', '.join(sorted(f.name for f in _t.glob('*.md')))}); "
                  f"figures in {Path(pdir(_p)) / 'figures'}/")
