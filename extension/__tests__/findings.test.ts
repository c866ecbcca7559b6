/**
 * @jest-environment jsdom
 */
import { Widget } from '@lumino/widgets';

import { GradientsModel } from '../model';
import { FindingsView } from '../views/findings';
import { FakeKernel, FakeSession, settle } from './fakes';
import { fixture } from './fixtures';
import type { JSONObject } from '@lumino/coreutils';

function row(step: number, severity: string, layer: string, kind: string): JSONObject {
  return { step, last_step: step, count: 1, layer, kind, severity, message: `${kind} at ${step}` };
}

/** A findings view fed one snapshot whose findings are `rows`, rendered. */
async function renderFindings(rows: JSONObject[]): Promise<{ view: FindingsView; model: GradientsModel }> {
  const kernel = new FakeKernel('k1');
  kernel.overrides.get_snapshot = req => {
    const f = fixture('snapshot_push');
    const message = f.message as JSONObject;
    return [{ ...message, id: req.id, findings: { total: rows.length, rows } }, f.buffers];
  };
  const model = new GradientsModel({ clientId: 'test' });
  const view = new FindingsView(model);
  Widget.attach(view, document.body);
  model.setSession(new FakeSession(kernel));
  await settle();
  await new Promise(resolve => requestAnimationFrame(() => resolve(undefined)));
  return { view, model };
}

describe('FindingsView', () => {
  it('shows the findings in the order the kernel sent them', async () => {
    // w.findings()'s order: first step ascending, then severity, then layer order; an
    // info first and an error last, so a re-sort by severity or recency would show
    const rows = [
      row(0, 'info', 'fc1', 'dead_units'),
      row(2, 'error', 'fc2', 'nan_origin'),
      row(2, 'warning', 'fc1', 'vanishing_gradient'),
      row(5, 'error', 'fc1', 'exploding_gradient')
    ];
    const { view, model } = await renderFindings(rows);
    const shown = Array.from(view.node.querySelectorAll('.jp-gradsight-finding')).map(
      el => (el as HTMLElement).dataset.kind
    );
    expect(shown).toEqual(['dead_units', 'nan_origin', 'vanishing_gradient', 'exploding_gradient']);
    view.dispose();
    model.dispose();
  });

  it('marks a suspected finding and says how many layers one cause covers', async () => {
    const suspected = { ...row(1, 'info', 'fc1', 'vanishing_gradient'), status: 'suspected', affected: ['fc1', 'fc2'] };
    const confirmed = { ...row(2, 'error', 'fc2', 'nan_origin'), status: 'confirmed', affected: ['fc2'] };
    const { view, model } = await renderFindings([suspected, confirmed]);
    const cards = Array.from(view.node.querySelectorAll('.jp-gradsight-finding'));
    expect(cards[0].querySelector('.jp-gradsight-pill-suspected')).not.toBeNull();
    expect(cards[0].textContent).toContain('one cause across 2 layers');
    expect(cards[1].querySelector('.jp-gradsight-pill-suspected')).toBeNull();
    view.dispose();
    model.dispose();
  });
});
