/**
 * A scripted kernel for the model tests: comms that answer requests with the protocol
 * fixtures (so the model is tested against the same messages as the Python side), a comm
 * target registry, status and iopub signals.
 */
import type { Kernel, KernelMessage } from '@jupyterlab/services';
import type { JSONObject, JSONValue } from '@lumino/coreutils';
import { Signal } from '@lumino/signaling';

import type { ICommLike, ICommMsgLike } from '../connection';
import type { CommTargetCallback, IKernelLike, ISessionLike } from '../model';
import type { Buffer } from '../protocol';
import { fixture } from './fixtures';

type Req = { kind: string; id: string; [key: string]: JSONValue };

let commCounter = 0;

export class FakeComm implements ICommLike {
  readonly commId: string;
  isDisposed = false;
  closedByPanel = false;
  openData: JSONValue | undefined = undefined;
  readonly sent: Req[] = [];

  constructor(
    readonly kernel: FakeKernel,
    readonly targetName: string
  ) {
    commCounter += 1;
    this.commId = `comm-${commCounter}`;
  }

  onMsg(_msg: ICommMsgLike): void {
    /* replaced by the connection */
  }
  onClose(_msg: ICommMsgLike): void {
    /* replaced by the connection */
  }

  open(data?: JSONValue): void {
    this.openData = data;
    this.kernel.received(this, data as Req, true);
  }

  send(data: JSONValue): void {
    this.sent.push(data as Req);
    this.kernel.received(this, data as Req, false);
  }

  close(): void {
    this.closedByPanel = true;
    this.isDisposed = true;
  }

  dispose(): void {
    this.isDisposed = true;
  }

  /** kernel -> panel */
  deliver(data: JSONObject, buffers: Buffer[] = []): void {
    if (!this.isDisposed) {
      void this.onMsg({ content: { comm_id: this.commId, data }, buffers });
    }
  }

  closeFromKernel(): void {
    void this.onClose({ content: { comm_id: this.commId, data: {} } });
    this.isDisposed = true;
  }
}

export class FakeKernel implements IKernelLike {
  readonly name = 'python3';
  status: Kernel.Status = 'idle';
  isDisposed = false;
  /** Whether `import gradsight` ran: without it the kernel closes every comm it is opened. */
  loaded = true;
  /** Answer requests at all (false: a busy kernel without subshells). */
  answering = true;
  readonly comms: FakeComm[] = [];
  readonly requests: Req[] = [];
  readonly targets = new Map<string, CommTargetCallback>();
  readonly statusChanged = new Signal<this, Kernel.Status>(this);
  readonly iopubMessage = new Signal<this, KernelMessage.IIOPubMessage>(this);
  overrides: { [kind: string]: (req: Req) => [JSONObject, Buffer[]] } = {};
  /** Live watchers, newest last (get_snapshot with watcher null answers the newest). */
  watcherNames = ['MLP'];

  constructor(readonly id: string) {}

  createComm(targetName: string): FakeComm {
    const c = new FakeComm(this, targetName);
    this.comms.push(c);
    return c;
  }

  registerCommTarget(name: string, cb: CommTargetCallback): void {
    this.targets.set(name, cb);
  }

  removeCommTarget(name: string, cb: CommTargetCallback): void {
    if (this.targets.get(name) === cb) {
      this.targets.delete(name);
    }
  }

  get openComms(): FakeComm[] {
    return this.comms.filter(c => !c.isDisposed);
  }

  received(comm: FakeComm, req: Req, isOpen: boolean): void {
    if (req && typeof req === 'object') {
      this.requests.push(req);
    }
    void Promise.resolve().then(() => {
      if (isOpen && !this.loaded) {
        comm.closeFromKernel();
        return;
      }
      if (this.answering) {
        const [data, buffers] = this.reply(req);
        comm.deliver(data, buffers);
      }
    });
  }

  reply(req: Req): [JSONObject, Buffer[]] {
    const override = this.overrides[req.kind];
    if (override) {
      return override(req);
    }
    const answer = (name: string, patch: JSONObject = {}): [JSONObject, Buffer[]] => {
      const f = fixture(name);
      return [{ ...(f.message as JSONObject), id: req.id, ...patch }, f.buffers];
    };
    switch (req.kind) {
      case 'hello':
        return answer('status');
      case 'get_snapshot': {
        const name = (req.watcher as string | null) ?? this.watcherNames[this.watcherNames.length - 1];
        return answer('snapshot_push', { watcher: { name, step_count: 3, n_layers: 3 } });
      }
      case 'get_layer':
        return answer('layer', { layer: req.layer, watcher: req.watcher });
      case 'get_compare': {
        // the compare fixture, its runs named as asked (the model drops answers to old questions)
        const f = fixture('compare');
        const msg = f.message as unknown as JSONObject & { runs: JSONObject[] };
        const runs = msg.runs.map((r, k) => ({
          ...r,
          watcher: { ...(r.watcher as JSONObject), name: (k === 0 ? req.watcher : req.other) as string }
        }));
        return [{ ...msg, id: req.id, runs }, f.buffers];
      }
      case 'get_heatmap':
        return answer('heatmap', { watcher: req.watcher, metric: req.metric ?? 'grad_norm', rank: req.rank ?? null });
      case 'get_gradcheck_reports':
      case 'run_gradcheck':
        return answer('gradcheck_reports');
      default:
        return answer('error', { code: 'unknown_kind', message: `no ${req.kind}` });
    }
  }

  /** A push (id null) on every open comm. */
  push(name: string, patch: JSONObject = {}): void {
    const f = fixture(name);
    for (const c of this.openComms) {
      c.deliver({ ...(f.message as JSONObject), id: null, ...patch }, f.buffers);
    }
  }

  setStatus(status: Kernel.Status): void {
    this.status = status;
    this.statusChanged.emit(status);
  }

  /** A cell starts: busy + execute_input on iopub, parented by its execute_request. */
  startCell(id = 'exec-1'): void {
    this.setStatus('busy');
    this.emitIopub('status', id, { execution_state: 'busy' });
    this.emitIopub('execute_input', id, {});
  }

  endCell(id = 'exec-1'): void {
    this.emitIopub('status', id, { execution_state: 'idle' });
    this.setStatus('idle');
  }

  /** A cell ran (JupyterLab sees execute_input on iopub). */
  executeCell(): void {
    this.startCell();
    this.endCell();
  }

  emitIopub(type: string, parentId: string, content: JSONObject): void {
    const msg = {
      header: { msg_type: type, msg_id: `${type}-${parentId}` },
      parent_header: { msg_type: 'execute_request', msg_id: parentId },
      content
    };
    this.iopubMessage.emit(msg as unknown as KernelMessage.IIOPubMessage);
  }

  /** A restart: JupyterLab disposes every comm without calling onClose. */
  restart(): void {
    this.setStatus('restarting');
    for (const c of this.comms) {
      c.isDisposed = true;
    }
    this.loaded = false;
    this.setStatus('starting');
    this.setStatus('idle');
  }

  /** `import gradsight` in a kernel where a panel target is registered: the kernel opens a comm. */
  announce(statusPatch: JSONObject = {}): FakeComm {
    this.loaded = true;
    const c = new FakeComm(this, 'gradsight');
    this.comms.push(c);
    const cb = this.targets.get('gradsight');
    if (!cb) {
      c.isDisposed = true; // JupyterLab closes a comm to an unknown target
      return c;
    }
    const f = fixture('status');
    const data = { ...f.message, id: null, ...statusPatch };
    const msg = { content: { comm_id: c.commId, target_name: 'gradsight', data } };
    void cb(c as unknown as Kernel.IComm, msg as unknown as KernelMessage.ICommOpenMsg);
    return c;
  }
}

export class FakeSession implements ISessionLike {
  session: { kernel: IKernelLike | null } | null;
  path = 'demo.ipynb';
  kernelDisplayName = 'Python 3 (gradsight)';
  isDisposed = false;
  readonly kernelChanged = new Signal<this, unknown>(this);
  readonly sessionChanged = new Signal<this, unknown>(this);
  readonly disposed = new Signal<this, unknown>(this);

  constructor(kernel: IKernelLike | null) {
    this.session = { kernel };
  }

  changeKernel(kernel: IKernelLike | null): void {
    this.session = { kernel };
    this.kernelChanged.emit(kernel);
  }
}

export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) {
    await new Promise(resolve => setTimeout(resolve, 0));
  }
}
