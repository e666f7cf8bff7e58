r"""benchmarks/graph_generation_steps.py: a tiny side-by-side run, as its own
process (as users run it)."""
import os
import os.path as osp
import subprocess
import sys

BENCH = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'benchmarks',
                 'graph_generation_steps.py')
ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')


def test_tiny_run_times_both_variants_of_both_stages(tmp_path):
    out = tmp_path / 'steps.md'
    proc = subprocess.run([sys.executable, BENCH, '--steps', '2', '--rounds', '1',
                           '--threads', '1', '--markdown', str(out), '--tiny'],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert table in proc.stdout
    rows = [[cell.strip() for cell in line.split('|')[1:-1]]
            for line in table.splitlines() if line.startswith('| ') and '---' not in line]
    for stage in ('auto-encoder', 'flow'):
        times = {variant: float(ms) for name, variant, ms, *_ in rows if name == stage
                 and not variant.startswith('**')}
        assert set(times) == {'eager', 'compiled (`torch.compile`, dynamic, fullgraph)'}
        assert all(ms > 0 for ms in times.values())
        assert any(name == stage and variant == '**speed-up**' for name, variant, *_ in rows)
    # both variants of both stages ran: one line per stage, round and variant
    for stage in ('ae', 'flow'):
        for variant in ('eager', 'compiled'):
            assert proc.stdout.count(f'{stage} round 0: {variant}') == 1
