"""``import mpsearch`` stays light: no Ray, no Optuna, no CUDA initialisation."""

import subprocess
import sys


def test_import_mpsearch_is_lean():
    code = ("import sys, mpsearch, mpsearch.host, mpsearch.quant, mpsearch.objectives\n"
            "import torch\n"
            "heavy = [m for m in ('ray', 'optuna') if m in sys.modules]\n"
            "print(heavy, torch.cuda.is_initialized())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_trial_record_imports_no_torch():
    code = ("import sys, mpsearch.record\n"
            "print([m for m in ('torch', 'optuna', 'ray') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
