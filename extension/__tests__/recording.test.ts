/**
 * @jest-environment jsdom
 */
import type { JSONObject } from '@lumino/coreutils';

import { GradientsModel } from '../model';
import { openRecording } from '../recording';
import { sourceLabel } from '../views/status';
import { FakeKernel, FakeSession, settle } from './fakes';
import { fixture } from './fixtures';

const REC = 'MLP [exp1]';

function withRecording(kernel: FakeKernel): void {
  const status = fixture('status');
  let opened = false;
  kernel.overrides.open_recording = req => {
    if (req.path === 'runs/missing') {
      const err = fixture('error');
      return [
        { ...(err.message as JSONObject), id: req.id, code: 'not_found', message: "'runs/missing' does not exist" },
        []
      ];
    }
    opened = true;
    kernel.watcherNames = ['MLP', REC];
    const snap = fixture('snapshot_push');
    return [
      { ...(snap.message as JSONObject), id: req.id, watcher: { name: REC, step_count: 7, n_layers: 3 } },
      snap.buffers
    ];
  };
  kernel.overrides.hello = req => {
    const watchers: JSONObject[] = [{ name: 'MLP', step_count: 3, n_layers: 3 }];
    if (opened) {
      watchers.push({ name: REC, step_count: 7, n_layers: 3, source: 'recording', live: true });
    }
    return [{ ...(status.message as JSONObject), id: req.id, watchers }, []];
  };
}

describe('opening a recording', () => {
  let model: GradientsModel;
  afterEach(() => model?.dispose());

  async function connected(): Promise<FakeKernel> {
    const kernel = new FakeKernel('k1');
    withRecording(kernel);
    model = new GradientsModel({ clientId: 'test' });
    model.setSession(new FakeSession(kernel));
    await settle();
    expect(model.state).toBe('connected');
    return kernel;
  }

  it('asks the kernel to open the path, then selects the recording and fetches its layer', async () => {
    const kernel = await connected();
    const name = await model.openRecording('runs/exp1/manifest.json', 'nbs/train.ipynb');
    expect(name).toBe(REC);
    const req = kernel.requests.find(r => r.kind === 'open_recording');
    expect(req).toMatchObject({ path: 'runs/exp1/manifest.json', notebook: 'nbs/train.ipynb' });
    expect(model.watcherName).toBe(REC);
    expect(model.snapshot?.watcher.name).toBe(REC);
    expect(model.watchers.map(w => w.name)).toEqual(['MLP', REC]);
    const [layer, heatmap] = kernel.requests.slice(-2);
    expect(layer).toMatchObject({ kind: 'get_layer', watcher: REC });
    expect(heatmap).toMatchObject({ kind: 'get_heatmap', watcher: REC });
    expect(model.layer?.watcher).toBe(REC);
    // the kernel's pushes for the live recording are taken; a push of another source is not
    kernel.push('snapshot_push', { watcher: { name: REC, step_count: 9, n_layers: 3 } });
    expect(model.snapshot?.watcher.step_count).toBe(9);
    kernel.push('snapshot_push', { watcher: { name: 'MLP', step_count: 99, n_layers: 3 } });
    expect(model.snapshot?.watcher.step_count).toBe(9);
  });

  it("shows the kernel's refusal and keeps the selection", async () => {
    await connected();
    const before = model.watcherName;
    expect(await model.openRecording('runs/missing', 'nbs/train.ipynb')).toBeNull();
    expect(model.lastError).toContain('does not exist');
    expect(model.watcherName).toBe(before);
  });

  it('without a kernel connection says what to do', async () => {
    model = new GradientsModel({ clientId: 'test' });
    expect(await model.openRecording('runs/exp1', 'nbs/train.ipynb')).toBeNull();
    expect(model.lastError).toContain('import gradsight');
  });
});

describe('the gradsight:open-recording command', () => {
  it('opens the path in the current notebook and shows the panel', async () => {
    const calls: string[][] = [];
    const shown: boolean[] = [];
    const ctx = {
      model: { openRecording: async (p: string, nb: string) => (calls.push([p, nb]), REC) },
      notebookPath: 'nbs/train.ipynb',
      showPanel: () => shown.push(true)
    };
    expect(await openRecording('runs/exp1/manifest.json', ctx)).toBe(REC);
    expect(calls).toEqual([['runs/exp1/manifest.json', 'nbs/train.ipynb']]);
    expect(shown).toEqual([true]);
  });

  it('refuses without a notebook or a path, saying what to do', async () => {
    const model = { openRecording: async () => REC };
    await expect(openRecording('runs/exp1', { model, notebookPath: null, showPanel: () => {} })).rejects.toThrow(
      /Open a notebook first.*gs\.open\("runs\/exp1"\)/
    );
    await expect(openRecording(undefined, { model, notebookPath: 'a.ipynb', showPanel: () => {} })).rejects.toThrow(
      /needs the path of a recording/
    );
  });
});

describe('the source selector', () => {
  it('names watchers and recordings apart, with the live state', () => {
    expect(sourceLabel({ name: 'MLP', step_count: 3, n_layers: 3 }, true)).toBe('MLP (3 layers)');
    expect(sourceLabel({ name: 'MLP', step_count: 3, n_layers: 3 }, false)).toBe('MLP');
    const rec = { name: REC, step_count: 7, n_layers: 3, source: 'recording' as const };
    expect(sourceLabel({ ...rec, live: true }, true)).toBe(`${REC} (recording, live, 3 layers)`);
    expect(sourceLabel({ ...rec, live: false }, false)).toBe(`${REC} (recording)`);
  });
});
