"""evals/ncu_kernels.py on CPU: the case list, argument errors, and the summary of Nsight Compute CSV files (the
profiles themselves need a GPU and ncu: ``bash evals/gpu_session.sh ncu``)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "evals"))

import ncu_kernels  # noqa: E402

# the shape of `ncu --csv --page details`: its own log lines, then one CSV row per metric
CSV = '''==PROF== Connected to process 123
==PROF== Profiling "_bwd_kernel" - 0: 0%....50%....100% - 40 passes
"ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"
"0","_bwd_kernel","GPU Speed Of Light Throughput","DRAM Throughput","%","77.31"
"0","_bwd_kernel","GPU Speed Of Light Throughput","Duration","us","98.62"
"0","_bwd_kernel","Occupancy","Achieved Occupancy","%","51.20"
"0","_bwd_kernel","Launch Statistics","Registers Per Thread","register/thread","38"
"0","_bwd_kernel","Occupancy","Achieved Occupancy","%","99.9"
'''


def test_summary_reads_the_headline_metrics(tmp_path, capsys):
    path = tmp_path / "ncu_softmax-bwd-gpt2.csv"
    path.write_text(CSV)
    (row,) = ncu_kernels.summary([str(path)])
    assert row["file"] == "ncu_softmax-bwd-gpt2.csv"
    assert row["dram %"] == "77.31 %" and row["duration"] == "98.62 us"
    assert row["occupancy %"] == "51.20 %"  # the first value of a metric listed twice
    assert row["regs/thread"] == "38 register/thread"
    assert row["L2 hit %"] == "-"  # not in the file
    ncu_kernels.main(["--summary", str(path)])
    out = capsys.readouterr().out
    assert "77.31 %" in out and "ncu_softmax-bwd-gpt2.csv" in out


def test_list_names_every_case_and_its_kernel(capsys):
    ncu_kernels.main(["--list"])
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list(ncu_kernels.CASES)
    assert [ln.split()[1] for ln in lines] == [k for k, _ in ncu_kernels.CASES.values()]


@pytest.mark.parametrize("argv, message", [([], "name a case"), (["copy", "--reps", "0"], "at least 1"),
                                           (["nope"], "invalid choice")])
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ncu_kernels.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
