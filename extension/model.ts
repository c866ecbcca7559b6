/**
 * The panel's model: follows one notebook session's kernel, keeps a comm open to the
 * kernel's `gradsight` target across restarts and kernel changes, and holds the latest
 * decoded state for the views, announced by the `changed` signal.
 *
 * Views never talk to the kernel; they call the model's actions (selectWatcher,
 * selectLayer, runGradcheck) and re-render on `changed`.
 */
import type { Kernel, KernelMessage } from '@jupyterlab/services';
import type { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { Connection, ICommLike, IIncoming, ProtocolRequestError } from './connection';
import { ILayerData, IReportsData, ISnapshotData, layerData, snapshotData } from './data';
import packageInfo from '../package.json';
import { COMM_TARGET, GradcheckReports, Layer, Snapshot, Status, WatcherSummary, isReply } from './protocol';

/** Where the model stands with the current notebook's kernel. */
export type ConnectionState =
  | 'no-notebook' // no notebook is open
  | 'no-kernel' // the notebook has no kernel
  | 'connecting' // a comm open is in flight
  | 'not-loaded' // the kernel has no `gradsight` target: `import gradsight` was not run
  | 'connected'
  | 'restarting'
  | 'dead';

export type Change = 'state' | 'status' | 'snapshot' | 'layer' | 'reports' | 'busy' | 'selection' | 'error';

/** What the model reads of a kernel connection; Kernel.IKernelConnection satisfies it. */
export interface IKernelLike {
  readonly id: string;
  readonly name: string;
  readonly status: Kernel.Status;
  readonly isDisposed: boolean;
  readonly statusChanged: ISignal<unknown, Kernel.Status>;
  readonly iopubMessage: ISignal<unknown, KernelMessage.IIOPubMessage>;
  /** Known once `info` resolves; JupyterLab then sends comm messages over a subshell. */
  readonly supportsSubshells?: boolean;
  readonly info?: Promise<unknown>;
  createComm(targetName: string, commId?: string): ICommLike;
  registerCommTarget(targetName: string, callback: CommTargetCallback): void;
  removeCommTarget(targetName: string, callback: CommTargetCallback): void;
}

export type CommTargetCallback = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => void | PromiseLike<void>;

/** What the model reads of a notebook's session context; ISessionContext satisfies it. */
export interface ISessionLike {
  readonly session: { readonly kernel: IKernelLike | null } | null;
  readonly path: string;
  readonly kernelDisplayName: string;
  readonly isDisposed: boolean;
  readonly kernelChanged: ISignal<unknown, unknown>;
  readonly sessionChanged: ISignal<unknown, unknown>;
  readonly disposed: ISignal<unknown, unknown>;
}

export namespace GradientsModel {
  export interface IOptions {
    /** Prefix of request ids (default: random). */
    clientId?: string;
    clientVersion?: string;
    /** Whether the panel is visible (default true); hidden, the model holds no comm. */
    active?: boolean;
  }
}

export class GradientsModel implements IDisposable {
  constructor(options: GradientsModel.IOptions = {}) {
    this._clientId = options.clientId ?? `gs-${Math.random().toString(36).slice(2, 10)}`;
    this._clientVersion = options.clientVersion ?? packageInfo.version;
    this._active = options.active ?? true;
  }

  get changed(): ISignal<this, Change> {
    return this._changed;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }
  get state(): ConnectionState {
    return this._state;
  }
  get session(): ISessionLike | null {
    return this._session;
  }
  get kernel(): IKernelLike | null {
    return this._kernel;
  }
  get status(): Status | null {
    return this._status;
  }
  get watchers(): readonly WatcherSummary[] {
    return this._status?.watchers ?? [];
  }
  /** The watcher shown: the user's pick, else the kernel's newest. */
  get watcherName(): string | null {
    return this._watcher ?? this._snapshot?.watcher.name ?? this.watchers[this.watchers.length - 1]?.name ?? null;
  }
  get snapshot(): ISnapshotData | null {
    return this._snapshot;
  }
  /** The layer shown in detail: the user's pick, else the kernel's default (first flagged). */
  get layerName(): string | null {
    return this._layer ?? this._snapshot?.selectedLayer ?? null;
  }
  get layer(): ILayerData | null {
    return this._layerData;
  }
  get reports(): IReportsData | null {
    return this._reports;
  }
  /**
   * A cell is executing: requests may wait (without subshells) and gradcheck is refused.
   * Not `kernel.status`: with comms on subshells, the subshell's idle/busy messages make
   * that flicker to idle in the middle of a training cell.
   */
  get kernelBusy(): boolean {
    return this._executing.size > 0;
  }
  get gradcheckRunning(): boolean {
    return this._gradcheckRunning;
  }
  get lastError(): string | null {
    return this._lastError;
  }
  /** Pushes received since the comm opened (the views show liveness with it). */
  get pushCount(): number {
    return this._pushes;
  }

  get active(): boolean {
    return this._active;
  }

  /**
   * A hidden panel costs the kernel nothing: the comm is closed (so the kernel drops its
   * registry subscription) and the comm target unregistered; showing it reconnects.
   */
  setActive(active: boolean): void {
    if (active === this._active) {
      return;
    }
    this._active = active;
    this._onKernelChanged();
  }

  /** Follow this notebook's session (null: none open). */
  setSession(session: ISessionLike | null): void {
    if (session === this._session) {
      return;
    }
    if (this._session) {
      this._session.kernelChanged.disconnect(this._onKernelChanged, this);
      this._session.sessionChanged.disconnect(this._onKernelChanged, this);
      this._session.disposed.disconnect(this._onSessionDisposed, this);
    }
    this._session = session;
    if (session) {
      session.kernelChanged.connect(this._onKernelChanged, this);
      session.sessionChanged.connect(this._onKernelChanged, this);
      session.disposed.connect(this._onSessionDisposed, this);
    }
    this._onKernelChanged();
  }

  /** Show this watcher (null: the newest); fetches its snapshot and layer detail. */
  async selectWatcher(name: string | null): Promise<void> {
    if (name !== this._watcher) {
      this._watcher = name;
      this._layer = null;
      this._layerData = null;
      this._emit('selection');
    }
    await this._fetchSnapshot();
  }

  /** Show this layer's histograms and stats (null: back to the kernel's default). */
  async selectLayer(name: string | null): Promise<void> {
    if (name !== this._layer) {
      this._layer = name;
      if (this._layerData?.layer !== this.layerName) {
        this._layerData = null;
      }
      this._emit('selection');
    }
    await this._fetchLayer();
  }

  /** Re-read everything from the kernel (after connecting, or on the user's request). */
  async refresh(): Promise<void> {
    const conn = this._conn;
    if (!conn) {
      return;
    }
    try {
      const reply = await conn.request({ kind: 'hello', client: this._client() });
      if (reply.message.kind === 'status') {
        this._setStatus(reply.message);
      }
    } catch (e) {
      this._fail(e);
      return;
    }
    await this._fetchSnapshot();
    if (this._status?.features.gradcheck) {
      await this._fetchReports();
    }
  }

  /** Run the in-model gradcheck of the selected layer; refused while the kernel is busy. */
  async runGradcheck(mode = 'full'): Promise<void> {
    const conn = this._conn;
    const watcher = this.watcherName;
    const layer = this.layerName;
    if (!conn || watcher === null || layer === null || this.kernelBusy || this._gradcheckRunning) {
      return;
    }
    this._gradcheckRunning = true;
    this._lastError = null;
    this._emit('reports');
    try {
      const reply = await conn.request({ kind: 'run_gradcheck', watcher, layer, mode });
      this._onReports(reply);
    } catch (e) {
      this._fail(e);
    } finally {
      this._gradcheckRunning = false;
      this._emit('reports');
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this.setSession(null);
    Signal.clearData(this);
  }

  // -- kernel following ------------------------------------------------------------------
  private _onSessionDisposed(): void {
    this.setSession(null);
  }

  private _onKernelChanged(): void {
    const kernel = this._active ? (this._session?.session?.kernel ?? null) : null;
    if (kernel === this._kernel) {
      if (!kernel) {
        this._setState(this._session ? 'no-kernel' : 'no-notebook');
      }
      return;
    }
    this._detachKernel();
    this._executing.clear();
    this._kernel = kernel;
    if (!kernel) {
      this._setState(this._session ? 'no-kernel' : 'no-notebook');
      return;
    }
    kernel.registerCommTarget(COMM_TARGET, this._onKernelComm);
    kernel.statusChanged.connect(this._onKernelStatus, this);
    kernel.iopubMessage.connect(this._onIopub, this);
    this._connect();
  }

  /**
   * Resolves once the comm's subshell exists, so that what the connection sends travels on
   * it and the kernel answers even while a training cell runs (JupyterLab 4.6 + ipykernel
   * 7). Bounded: an older kernel has no subshells, and messages then wait for the cell.
   */
  private async _subshellReady(kernel: IKernelLike, comm: ICommLike): Promise<void> {
    const started = comm.subshellStarted;
    if (!started || !kernel.info) {
      return;
    }
    const timeout = new Promise<void>(resolve => setTimeout(resolve, 3000));
    await Promise.race([kernel.info.then(() => (kernel.supportsSubshells ? started : undefined)), timeout]).catch(
      () => undefined
    );
  }

  private _detachKernel(): void {
    const kernel = this._kernel;
    this._dropConnection();
    this._clearData();
    if (kernel && !kernel.isDisposed) {
      kernel.removeCommTarget(COMM_TARGET, this._onKernelComm);
      kernel.statusChanged.disconnect(this._onKernelStatus, this);
      kernel.iopubMessage.disconnect(this._onIopub, this);
    }
    this._kernel = null;
  }

  private _onKernelStatus(_: unknown, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._executing.clear();
    }
    if (status === 'restarting' || status === 'autorestarting') {
      this._dropConnection();
      this._clearData();
      this._retry = true;
      this._setState('restarting');
    } else if (status === 'dead') {
      this._dropConnection();
      this._setState('dead');
    } else if (status === 'idle' && !this._conn && !this._attempt && this._retry) {
      // after a restart, or once a cell ran (it may have imported gradsight)
      this._connect();
    }
  }

  private _onIopub(_: unknown, msg: KernelMessage.IIOPubMessage): void {
    const type = msg.header.msg_type;
    if (type === 'execute_input') {
      this._retry = true;
    } else if (type === 'status') {
      const parent = msg.parent_header as Partial<KernelMessage.IHeader>;
      if (parent.msg_type !== 'execute_request' || !parent.msg_id) {
        return;
      }
      const state = (msg.content as { execution_state?: string }).execution_state;
      const before = this._executing.size;
      if (state === 'busy') {
        this._executing.add(parent.msg_id);
      } else if (state === 'idle') {
        this._executing.delete(parent.msg_id);
      }
      if (this._executing.size !== before) {
        this._emit('busy');
      }
    }
  }

  /** Open a comm from the panel; if the target is missing the kernel closes it at once. */
  private _connect(): void {
    const kernel = this._kernel;
    if (!kernel || this._conn || this._attempt) {
      return;
    }
    this._retry = false;
    let comm: ICommLike;
    try {
      comm = kernel.createComm(COMM_TARGET);
    } catch {
      this._setState('not-loaded');
      return;
    }
    const conn = new Connection(comm, this._clientId, this._subshellReady(kernel, comm));
    this._attempt = conn;
    this._setState('connecting');
    conn
      .open(this._client())
      .then(
      status => {
        if (this._attempt === conn) {
          this._attempt = null;
        }
        this._adopt(conn, status);
      },
      () => {
        if (this._attempt === conn) {
          this._attempt = null;
          conn.dispose();
          if (!this._conn && this._kernel === kernel && this._state === 'connecting') {
            this._setState('not-loaded');
          }
        }
      }
    );
  }

  /** The kernel opened a comm (gradsight was just imported): adopt it, confirm with hello. */
  private _onKernelComm = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg): void => {
    if (this._conn) {
      comm.close(); // already connected: the kernel closes its end too
      return;
    }
    const data = msg.content.data;
    const kernel = this._kernel;
    const conn = new Connection(comm, this._clientId, kernel ? this._subshellReady(kernel, comm) : undefined);
    if (!isReply(data) || data.kind !== 'status') {
      conn.dispose();
      return;
    }
    this._adopt(conn, data);
  };

  private _adopt(conn: Connection, status: Status): void {
    if (this._isDisposed || (this._conn && this._conn !== conn) || conn.isClosed) {
      conn.dispose();
      return;
    }
    if (this._attempt && this._attempt !== conn) {
      const attempt = this._attempt;
      this._attempt = null;
      attempt.dispose();
    }
    this._conn = conn;
    this._pushes = 0;
    conn.received.connect(this._onPush, this);
    conn.closed.connect(this._onConnClosed, this);
    this._setStatus(status);
    this._setState('connected');
    void this.refresh();
  }

  private _onConnClosed(conn: Connection): void {
    if (conn !== this._conn) {
      return;
    }
    this._conn = null;
    this._clearData();
    this._retry = true;
    const s = this._kernel?.status;
    this._setState(s === 'restarting' || s === 'autorestarting' ? 'restarting' : 'not-loaded');
  }

  private _dropConnection(): void {
    const conn = this._conn;
    const attempt = this._attempt;
    this._conn = null;
    this._attempt = null;
    if (conn) {
      conn.received.disconnect(this._onPush, this);
      conn.closed.disconnect(this._onConnClosed, this);
      conn.dispose();
    }
    attempt?.dispose();
  }

  private _clearData(): void {
    this._status = null;
    this._snapshot = null;
    this._layerData = null;
    this._reports = null;
    this._gradcheckRunning = false;
    this._emit('status');
  }

  // -- data ------------------------------------------------------------------------------
  private _onPush(_: Connection, incoming: IIncoming): void {
    this._pushes += 1;
    const msg = incoming.message;
    switch (msg.kind) {
      case 'status':
        this._setStatus(msg, true);
        break;
      case 'snapshot':
        this._onSnapshot(msg, incoming);
        break;
      case 'layer':
        this._onLayer(msg, incoming);
        break;
      case 'gradcheck_reports':
        this._onReports(incoming);
        break;
      case 'error':
        this._lastError = msg.message;
        this._emit('error');
        break;
    }
  }

  /** `fromPush`: a status the kernel sent by itself (a model was watched or closed). */
  private _setStatus(status: Status, fromPush = false): void {
    this._status = status;
    const names = status.watchers.map(w => w.name);
    if (this._watcher !== null && !names.includes(this._watcher)) {
      this._watcher = null; // closed or replaced: follow the newest again
      this._layer = null;
    }
    if (this._snapshot && !names.includes(this._snapshot.watcher.name)) {
      this._snapshot = null;
      this._layerData = null;
      this._emit('snapshot');
      this._emit('layer');
    }
    if (fromPush && !this._snapshot && names.length > 0 && this._conn && !this._fetchingSnapshot) {
      void this._fetchSnapshot(); // a model was just watched, or the shown one replaced
    }
    this._emit('status');
  }

  private _onSnapshot(msg: Snapshot, incoming: IIncoming): void {
    if (this._watcher !== null && msg.watcher.name !== this._watcher) {
      return;
    }
    try {
      this._snapshot = snapshotData(msg, incoming.buffers);
    } catch (e) {
      this._fail(e);
      return;
    }
    if (this._layer !== null && !this._snapshot.layers.names.includes(this._layer)) {
      this._layer = null;
    }
    this._emit('snapshot');
  }

  private _onLayer(msg: Layer, incoming: IIncoming): void {
    if (msg.layer !== this.layerName || msg.watcher !== this.watcherName) {
      return; // a push for a layer the user has moved away from
    }
    try {
      this._layerData = layerData(msg, incoming.buffers);
    } catch (e) {
      this._fail(e);
      return;
    }
    this._emit('layer');
  }

  private _onReports(incoming: IIncoming): void {
    const msg = incoming.message as GradcheckReports;
    this._reports = { total: msg.total, reports: msg.reports };
    this._emit('reports');
  }

  private async _fetchSnapshot(): Promise<void> {
    const conn = this._conn;
    if (!conn || this.watchers.length === 0) {
      this._emit('snapshot');
      return;
    }
    this._fetchingSnapshot = true;
    try {
      const reply = await conn.request({ kind: 'get_snapshot', watcher: this._watcher });
      if (reply.message.kind === 'snapshot') {
        this._recovered();
        this._onSnapshot(reply.message, reply);
      }
    } catch (e) {
      this._fail(e);
      return;
    } finally {
      this._fetchingSnapshot = false;
    }
    await this._fetchLayer();
  }

  private async _fetchLayer(): Promise<void> {
    const conn = this._conn;
    const watcher = this.watcherName;
    const layer = this.layerName;
    if (!conn || watcher === null || layer === null) {
      return;
    }
    try {
      // only a layer the user picked becomes the one the kernel pushes
      const reply = await conn.request({ kind: 'get_layer', watcher, layer, follow: this._layer !== null });
      if (reply.message.kind === 'layer') {
        this._recovered();
        this._onLayer(reply.message, reply);
      }
    } catch (e) {
      this._fail(e);
    }
  }

  private async _fetchReports(): Promise<void> {
    const conn = this._conn;
    if (!conn) {
      return;
    }
    try {
      this._onReports(await conn.request({ kind: 'get_gradcheck_reports' }));
    } catch (e) {
      this._fail(e);
    }
  }

  /** A request succeeded: an earlier failure (e.g. a read that raced the training step) is over. */
  private _recovered(): void {
    if (this._lastError !== null && !this._gradcheckRunning) {
      this._lastError = null;
      this._emit('error');
    }
  }

  private _fail(e: unknown): void {
    if (e instanceof ProtocolRequestError && e.code === 'closed') {
      return; // the state change says it already
    }
    this._lastError = e instanceof Error ? e.message : String(e);
    this._emit('error');
  }

  private _client(): { name: string; version: string } {
    return { name: 'gradsight-jupyterlab', version: this._clientVersion };
  }

  private _setState(state: ConnectionState): void {
    if (state !== this._state) {
      console.debug(`gradsight: ${this._state} -> ${state} (kernel ${this._kernel?.id ?? 'none'})`);
      this._state = state;
      if (state !== 'connected') {
        this._lastError = null;
      }
      this._emit('state');
    }
  }

  private _emit(change: Change): void {
    if (!this._isDisposed) {
      this._changed.emit(change);
    }
  }

  private _clientId: string;
  private _clientVersion: string;
  private _isDisposed = false;
  private _active: boolean;
  private _state: ConnectionState = 'no-notebook';
  private _session: ISessionLike | null = null;
  private _kernel: IKernelLike | null = null;
  private _conn: Connection | null = null;
  private _attempt: Connection | null = null;
  private _retry = false;
  private _status: Status | null = null;
  private _snapshot: ISnapshotData | null = null;
  private _layerData: ILayerData | null = null;
  private _reports: IReportsData | null = null;
  private _watcher: string | null = null;
  private _layer: string | null = null;
  private _gradcheckRunning = false;
  private _lastError: string | null = null;
  private _pushes = 0;
  private _fetchingSnapshot = false;
  private _executing = new Set<string>();
  private _changed = new Signal<this, Change>(this);
}
