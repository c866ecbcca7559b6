import { Connection, ProtocolRequestError } from '../connection';
import { FakeKernel, settle } from './fakes';

describe('Connection', () => {
  it('sends nothing before its comm is ready (the subshell exists)', async () => {
    const kernel = new FakeKernel('k');
    const comm = kernel.createComm('gradsight');
    let ready!: () => void;
    const conn = new Connection(comm, 'c', new Promise<void>(r => (ready = r)));
    const opened = conn.open({ name: 't', version: '0' });
    await settle();
    expect(comm.openData).toBeUndefined();
    ready();
    const status = await opened;
    expect(status.kind).toBe('status');
    expect(kernel.requests.map(r => r.kind)).toEqual(['hello']);
    conn.dispose();
  });

  it('correlates replies by id and ignores replies meant for another panel', async () => {
    const kernel = new FakeKernel('k');
    const comm = kernel.createComm('gradsight');
    const conn = new Connection(comm, 'c');
    const pushes: string[] = [];
    conn.received.connect((_, m) => pushes.push(m.message.kind));
    await conn.open({});
    comm.deliver({ v: 1, kind: 'error', id: 'other-panel:1', code: 'busy', message: 'not ours' });
    const reply = await conn.request({ kind: 'get_snapshot', watcher: null });
    expect(reply.message.kind).toBe('snapshot');
    expect(reply.buffers.length).toBeGreaterThan(0);
    expect(pushes).toEqual([]);
    conn.dispose();
  });

  it('rejects a request whose reply is invalid instead of waiting forever', async () => {
    const kernel = new FakeKernel('k');
    const comm = kernel.createComm('gradsight');
    const conn = new Connection(comm, 'c');
    await conn.open({});
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    kernel.overrides.get_snapshot = req => [{ v: 1, kind: 'snapshot', id: req.id, watcher: 'no' }, []];
    await expect(conn.request({ kind: 'get_snapshot', watcher: null })).rejects.toMatchObject({
      code: 'bad_message'
    });
    warn.mockRestore();
    conn.dispose();
  });

  it('rejects an error reply with its code, and pending requests when the comm closes', async () => {
    const kernel = new FakeKernel('k');
    const comm = kernel.createComm('gradsight');
    const conn = new Connection(comm, 'c');
    await conn.open({});
    kernel.overrides.get_layer = req => [
      { v: 1, kind: 'error', id: req.id, code: 'not_found', message: "no watched layer named 'x'" },
      []
    ];
    await expect(conn.request({ kind: 'get_layer', watcher: 'MLP', layer: 'x' })).rejects.toMatchObject({
      code: 'not_found'
    });
    kernel.answering = false;
    const pending = conn.request({ kind: 'get_gradcheck_reports' });
    await settle();
    comm.closeFromKernel();
    await expect(pending).rejects.toBeInstanceOf(ProtocolRequestError);
    expect(conn.isClosed).toBe(true);
    conn.dispose();
  });
});
