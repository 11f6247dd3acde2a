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


# The ablation table on its own (`snakemake --cores all ablation`): the default target builds it too unless the
# profile sets `ablation_in_all: false` (the embedded default does, to keep its run within 45 minutes).
rule ablation:
    input:
        expand(f"{P}/tables/ablation.{{ext}}", pair=PAIRS, ext=["md", "csv", "tex", "html"]) if "ablation" in TABLES
        else [],


onsuccess:
    for _p in PAIRS:
        _t = Path(pdir(_p)) / "tables"
        if _t.is_dir():
            print(f"dwakd: tables in {_t}/ ({', '.join(sorted(f.name for f in _t.glob('*.md')))}); "
                  f"figures in {Path(pdir(_p)) / 'figures'}/")
