import { KernelFollower } from '../follower';
import type { ConnectionState } from '../follower';
import { FakeKernel, FakeSession, settle } from './fakes';

function follower(active = true): KernelFollower {
  return new KernelFollower({ clientId: 'f', client: { name: 'test', version: '0' }, active });
}

describe('KernelFollower', () => {
  it('connects to the session kernel and announces the connection with its status', async () => {
    const f = follower();
    const kernel = new FakeKernel('k1');
    const states: ConnectionState[] = [];
    const statuses: string[] = [];
    f.stateChanged.connect((_, s) => states.push(s));
    f.connected.connect((_, c) => statuses.push(c.status.kind));
    f.setSession(new FakeSession(kernel));
    await settle();
    expect(states).toEqual(['connecting', 'connected']);
    expect(statuses).toEqual(['status']);
    expect(f.connection).not.toBeNull();
    expect(kernel.requests.map(r => r.kind)).toEqual(['hello']); // the store, not the follower, asks for data
    f.dispose();
  });

  it('tracks executing cells, and keeps the data readable when the kernel dies', async () => {
    const f = follower();
    const kernel = new FakeKernel('k1');
    const busy: boolean[] = [];
    const ends: boolean[] = [];
    f.busyChanged.connect((_, b) => busy.push(b));
    f.setSession(new FakeSession(kernel));
    await settle();
    f.disconnected.connect((_, d) => ends.push(d.keepData));
    kernel.startCell();
    kernel.endCell();
    expect(busy).toEqual([true, false]);
    kernel.setStatus('dead');
    expect(f.state).toBe('dead');
    expect(ends).toEqual([true]);
    f.dispose();
  });

  it('after dispose, ignores the session and kernel it followed', async () => {
    const f = follower();
    const kernel = new FakeKernel('k1');
    const session = new FakeSession(kernel);
    f.setSession(session);
    await settle();
    f.dispose();
    expect(kernel.openComms).toHaveLength(0);
    expect(kernel.targets.size).toBe(0);
    session.changeKernel(new FakeKernel('k2'));
    kernel.executeCell();
    kernel.setStatus('idle');
    await settle();
    expect(kernel.comms).toHaveLength(1);
    expect(f.kernel).toBeNull();
    expect(f.state).toBe('no-notebook');
  });

  it('holds no comm while inactive', async () => {
    const f = follower(false);
    const kernel = new FakeKernel('k1');
    f.setSession(new FakeSession(kernel));
    await settle();
    expect(kernel.comms).toHaveLength(0);
    f.setActive(true);
    await settle();
    expect(f.state).toBe('connected');
    f.dispose();
  });
});
