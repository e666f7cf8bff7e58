r"""benchmarks/graph_generation_steps.py: a tiny side-by-side run, as its own
process (as users run it)."""
import os
import os.path as osp
import subprocess
import sys

BENCH = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'benchmarks',
                 'graph_generation_steps.py')
ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')


def test_tiny_run_times_both_variants(tmp_path):
    out = tmp_path / 'steps.md'
    proc = subprocess.run([sys.executable, BENCH, '--steps', '2', '--rounds', '1',
                           '--threads', '1', '--markdown', str(out), '--tiny'],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert table in proc.stdout
    rows = {line.split('|')[1].strip(): line for line in table.splitlines()
            if line.startswith('| ')}
    assert float(rows['eager'].split('|')[2]) > 0
    assert float(rows['compiled (`torch.compile`, dynamic, fullgraph)'].split('|')[2]) > 0
    assert 'speed-up' in table
    # both variants ran the same batches: one line per round and variant
    assert proc.stdout.count('round 0: eager') == 1
    assert proc.stdout.count('round 0: compiled') == 1
