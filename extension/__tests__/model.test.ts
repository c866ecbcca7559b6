import { Change, GradientsModel } from '../model';
import type { JSONObject } from '@lumino/coreutils';

import { FakeKernel, FakeSession, settle } from './fakes';
import { fixture } from './fixtures';

function setup(options: { loaded?: boolean } = {}) {
  const kernel = new FakeKernel('k1');
  kernel.loaded = options.loaded ?? true;
  const session = new FakeSession(kernel);
  const model = new GradientsModel({ clientId: 'test' });
  const changes: Change[] = [];
  model.changed.connect((_, c) => changes.push(c));
  return { kernel, session, model, changes };
}

describe('GradientsModel', () => {
  let model: GradientsModel;
  afterEach(() => model?.dispose());

  it('connects, then fetches status, snapshot, the default layer and reports', async () => {
    const t = setup();
    model = t.model;
    expect(model.state).toBe('no-notebook');
    model.setSession(t.session);
    await settle();
    expect(model.state).toBe('connected');
    expect(model.watchers.map(w => w.name)).toEqual(['MLP']);
    expect(model.snapshot?.layers.names).toEqual(['fc1', 'act', 'fc2']);
    expect(Array.from(model.snapshot?.layers.columns.grad_norm ?? [])).toEqual([4, 0.4, 0.04]);
    // in the order the kernel sent them (w.findings(): first step ascending), not re-sorted
    expect(model.snapshot?.findings.rows.map(f => [f.step, f.severity])).toEqual([
      [1, 'warning'],
      [2, 'error']
    ]);
    expect(model.snapshot?.findings.rows[1].op).toBe('aten::log');
    expect(model.layerName).toBe('fc2'); // the kernel's default: the first flagged layer
    expect(model.layer?.layer).toBe('fc2');
    expect(model.layer?.histograms.grad.length).toBe(2);
    expect(model.reports?.reports[0].passed).toBe(false);
    const kinds = t.kernel.requests.map(r => r.kind);
    expect(kinds).toEqual(['hello', 'hello', 'get_snapshot', 'get_layer', 'get_heatmap', 'get_gradcheck_reports']);
    const getLayer = t.kernel.requests[3];
    expect(getLayer.follow).toBe(false); // the kernel's default is not pinned
    expect(t.kernel.targets.has('gradsight')).toBe(true);
  });

  it('says gradsight is not loaded when the kernel closes the comm, and retries after a cell ran', async () => {
    const t = setup({ loaded: false });
    model = t.model;
    model.setSession(t.session);
    await settle();
    expect(model.state).toBe('not-loaded');
    expect(t.kernel.openComms).toHaveLength(0);
    t.kernel.setStatus('busy');
    t.kernel.setStatus('idle'); // idle without a cell (e.g. our own comm_open): no retry loop
    await settle();
    expect(t.kernel.comms).toHaveLength(1);
    t.kernel.loaded = true;
    t.kernel.executeCell();
    await settle();
    expect(model.state).toBe('connected');
    expect(t.kernel.comms).toHaveLength(2);
  });

  it('adopts the comm the kernel opens when gradsight is imported, and confirms it', async () => {
    const t = setup({ loaded: false });
    model = t.model;
    model.setSession(t.session);
    await settle();
    expect(model.state).toBe('not-loaded');
    const comm = t.kernel.announce();
    await settle();
    expect(model.state).toBe('connected');
    expect(comm.sent[0].kind).toBe('hello'); // the kernel keeps an answered comm open
    expect(model.snapshot?.watcher.name).toBe('MLP');
  });

  it('applies pushes while training runs, ignoring other layers', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    t.kernel.push('snapshot_push', { watcher: { name: 'MLP', step_count: 7, n_layers: 3 } });
    expect(model.snapshot?.watcher.step_count).toBe(7);
    t.kernel.push('layer', { layer: 'fc1' }); // not the shown layer (fc2)
    expect(model.layer?.layer).toBe('fc2');
    t.kernel.push('layer', { layer: 'fc2', stats: { grad_norm: 123 } });
    expect(model.layer?.stats.grad_norm).toBe(123);
    expect(model.pushCount).toBe(3);
  });

  it('drops invalid messages from the kernel', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    const before = model.snapshot;
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    t.kernel.openComms[0].deliver({ v: 1, kind: 'snapshot', id: null, watcher: 'not an object' });
    t.kernel.openComms[0].deliver({ v: 1, kind: 'exec', id: null, code: 'alert(1)' });
    expect(model.snapshot).toBe(before);
    expect(warn).toHaveBeenCalledTimes(2);
    warn.mockRestore();
  });

  it('pins a layer the user picks', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    await model.selectLayer('fc1');
    expect(model.layer?.layer).toBe('fc1');
    const req = t.kernel.requests[t.kernel.requests.length - 1];
    expect(req).toMatchObject({ kind: 'get_layer', layer: 'fc1', follow: true });
  });

  it('runs gradcheck only when the kernel is idle, and reports errors', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    t.kernel.startCell();
    t.kernel.emitIopub('status', 'subshell-comm', { execution_state: 'idle' }); // not the cell
    expect(model.kernelBusy).toBe(true);
    await model.runGradcheck();
    expect(t.kernel.requests.filter(r => r.kind === 'run_gradcheck')).toHaveLength(0);
    t.kernel.endCell();
    expect(model.kernelBusy).toBe(false);
    await model.runGradcheck();
    expect(t.kernel.requests.filter(r => r.kind === 'run_gradcheck')).toHaveLength(1);
    expect(model.reports?.reports[0].title).toBe('fc1 (Linear)');
    t.kernel.overrides.run_gradcheck = req => [
      { v: 1, kind: 'error', id: req.id, code: 'not_found', message: 'no inputs recorded for fc2', request_kind: null },
      []
    ];
    await model.runGradcheck();
    expect(model.lastError).toBe('no inputs recorded for fc2');
    expect(model.gradcheckRunning).toBe(false);
  });

  it('recovers from a kernel restart', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    const states: string[] = [];
    model.changed.connect((_, c) => c === 'state' && states.push(model.state));
    t.kernel.restart();
    await settle();
    expect(states).toContain('restarting');
    expect(model.state).toBe('not-loaded'); // the fresh kernel has no gradsight yet
    expect(model.snapshot).toBeNull();
    t.kernel.announce(); // the user re-runs `import gradsight`
    await settle();
    expect(model.state).toBe('connected');
    expect(model.snapshot?.watcher.name).toBe('MLP');
  });

  it('fetches the model watched after gradsight was imported, with the layer the user picked', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    await model.selectLayer('fc1');
    t.kernel.restart();
    await settle();
    const empty = { watchers: [] };
    t.kernel.overrides.hello = req => [{ ...(fixture('status').message as JSONObject), id: req.id, ...empty }, []];
    const comm = t.kernel.announce(empty); // `import gradsight`: nothing watched yet
    await settle();
    expect(model.state).toBe('connected');
    expect(model.snapshot).toBeNull();
    t.kernel.requests.length = 0;
    comm.deliver({ ...(fixture('status').message as JSONObject), id: null }); // gs.watch(model)
    await settle();
    expect(model.snapshot?.watcher.name).toBe('MLP');
    expect(t.kernel.requests.map(r => [r.kind, r.layer ?? null])).toEqual([
      ['get_snapshot', null],
      ['get_layer', 'fc1'],
      ['get_heatmap', null]
    ]);
    expect(model.layer?.layer).toBe('fc1');
  });

  it('follows a kernel change and a notebook switch, closing the old comm', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    const old = t.kernel.openComms[0];
    const k2 = new FakeKernel('k2');
    t.session.changeKernel(k2);
    await settle();
    expect(old.closedByPanel).toBe(true);
    expect(t.kernel.targets.has('gradsight')).toBe(false);
    expect(model.kernel).toBe(k2);
    expect(model.state).toBe('connected');

    const other = new FakeSession(new FakeKernel('k3'));
    model.setSession(other);
    await settle();
    expect(k2.openComms).toHaveLength(0);
    expect(model.kernel?.id).toBe('k3');
    model.setSession(null);
    expect(model.state).toBe('no-notebook');
  });

  it('holds no comm while the panel is hidden', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    model.setActive(false);
    expect(t.kernel.openComms).toHaveLength(0);
    expect(t.kernel.targets.size).toBe(0);
    model.setActive(true);
    await settle();
    expect(model.state).toBe('connected');
    expect(t.kernel.openComms).toHaveLength(1);
  });

  it('shows the newest watcher when the followed one is closed', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    await model.selectWatcher('MLP');
    t.kernel.watcherNames = ['CNN'];
    t.kernel.push('status', { watchers: [{ name: 'CNN', step_count: 0, n_layers: 2 }] });
    await settle();
    expect(model.watcherName).toBe('CNN');
    expect(model.snapshot?.watcher.name).toBe('CNN');
  });

  it('disconnects everything on dispose', async () => {
    const t = setup();
    model = t.model;
    model.setSession(t.session);
    await settle();
    const before = t.changes.length;
    model.dispose();
    expect(t.kernel.openComms).toHaveLength(0);
    expect(t.kernel.targets.size).toBe(0);
    expect(model.isDisposed).toBe(true);
    t.kernel.executeCell(); // nothing the kernel or session does reaches the disposed model
    t.session.changeKernel(new FakeKernel('k2'));
    await settle();
    expect(t.kernel.comms).toHaveLength(1);
    expect(t.changes.length).toBe(before);
  });
});
