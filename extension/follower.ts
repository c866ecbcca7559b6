/**
 * Follows the active notebook's kernel: keeps one comm open to its `gradsight` target across
 * restarts, kernel changes and notebook switches, and knows whether a cell is executing.
 *
 * It owns the connection and nothing it carries; the data store (model.ts) listens to
 * `connected` and `disconnected` and does the requests. Split as JupyterLab's
 * kernel-messaging example splits the session-following panel from the kernel model.
 */
import type { Kernel, KernelMessage } from '@jupyterlab/services';
import type { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { Connection, ICommLike } from './connection';
import { COMM_TARGET, Hello, Status, isReply } from './protocol';

/** Where the panel stands with the current notebook's kernel. */
export type ConnectionState =
  | 'no-notebook' // no notebook is open
  | 'no-kernel' // the notebook has no kernel
  | 'connecting' // a comm open is in flight
  | 'not-loaded' // the kernel has no `gradsight` target: `import gradsight` was not run
  | 'connected'
  | 'restarting'
  | 'dead';

/** What the follower reads of a kernel connection; Kernel.IKernelConnection satisfies it. */
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

/** What the follower reads of a notebook's session context; ISessionContext satisfies it. */
export interface ISessionLike {
  readonly session: { readonly kernel: IKernelLike | null } | null;
  readonly path: string;
  readonly kernelDisplayName: string;
  readonly isDisposed: boolean;
  readonly kernelChanged: ISignal<unknown, unknown>;
  readonly sessionChanged: ISignal<unknown, unknown>;
  readonly disposed: ISignal<unknown, unknown>;
}

export namespace KernelFollower {
  export interface IOptions {
    /** Prefix of request ids. */
    clientId: string;
    /** Sent in `hello`. */
    client: NonNullable<Hello['client']>;
    /** Whether the panel is visible; hidden, the follower holds no comm. */
    active: boolean;
  }

  /** A comm the kernel answered: what the data store starts from. */
  export interface IConnected {
    readonly connection: Connection;
    readonly status: Status;
  }

  /** The connection ended; `keepData`: the kernel died, so what was shown stays readable. */
  export interface IDisconnected {
    readonly keepData: boolean;
  }
}

export class KernelFollower implements IDisposable {
  constructor(options: KernelFollower.IOptions) {
    this._clientId = options.clientId;
    this._client = options.client;
    this._active = options.active;
  }

  get stateChanged(): ISignal<this, ConnectionState> {
    return this._stateChanged;
  }
  /** A cell started or ended executing. */
  get busyChanged(): ISignal<this, boolean> {
    return this._busyChanged;
  }
  get connected(): ISignal<this, KernelFollower.IConnected> {
    return this._connected;
  }
  get disconnected(): ISignal<this, KernelFollower.IDisconnected> {
    return this._disconnected;
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
  /** The open connection, or null. */
  get connection(): Connection | null {
    return this._conn;
  }
  get active(): boolean {
    return this._active;
  }
  /** What the panel says it is, in `hello`. */
  get client(): NonNullable<Hello['client']> {
    return this._client;
  }
  /**
   * A cell is executing: requests may wait (without subshells) and gradcheck is refused.
   * Not `kernel.status`: with comms on subshells, the subshell's idle/busy messages make
   * that flicker to idle in the middle of a training cell.
   */
  get kernelBusy(): boolean {
    return this._executing.size > 0;
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

  /** Stops following: closes the comm, unregisters the target, disconnects every signal. */
  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this.setSession(null);
    this._isDisposed = true;
    Signal.clearData(this);
  }

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
    this._setExecuting(null);
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
    this._dropConnection({ keepData: false });
    if (kernel && !kernel.isDisposed) {
      kernel.removeCommTarget(COMM_TARGET, this._onKernelComm);
      kernel.statusChanged.disconnect(this._onKernelStatus, this);
      kernel.iopubMessage.disconnect(this._onIopub, this);
    }
    this._kernel = null;
  }

  private _onKernelStatus(_: unknown, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._setExecuting(null);
    }
    if (status === 'restarting' || status === 'autorestarting') {
      this._dropConnection({ keepData: false });
      this._retry = true;
      this._setState('restarting');
    } else if (status === 'dead') {
      this._dropConnection({ keepData: true });
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
      if (state === 'busy' || state === 'idle') {
        this._setExecuting(parent.msg_id, state === 'busy');
      }
    }
  }

  /** Track one execute request (null: forget them all); announces a change of kernelBusy. */
  private _setExecuting(msgId: string | null, busy = false): void {
    const before = this.kernelBusy;
    if (msgId === null) {
      this._executing.clear();
    } else if (busy) {
      this._executing.add(msgId);
    } else {
      this._executing.delete(msgId);
    }
    if (this.kernelBusy !== before && msgId !== null) {
      this._busyChanged.emit(this.kernelBusy);
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
    conn.open(this._client).then(
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

  /** The kernel opened a comm (gradsight was just imported): adopt it. */
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
    conn.closed.connect(this._onConnClosed, this);
    this._connected.emit({ connection: conn, status });
    this._setState('connected');
  }

  private _onConnClosed(conn: Connection): void {
    if (conn !== this._conn) {
      return;
    }
    this._conn = null;
    this._disconnected.emit({ keepData: false });
    this._retry = true;
    const s = this._kernel?.status;
    this._setState(s === 'restarting' || s === 'autorestarting' ? 'restarting' : 'not-loaded');
  }

  private _dropConnection(how: KernelFollower.IDisconnected): void {
    const conn = this._conn;
    const attempt = this._attempt;
    this._conn = null;
    this._attempt = null;
    if (conn) {
      conn.closed.disconnect(this._onConnClosed, this);
      conn.dispose();
    }
    attempt?.dispose();
    this._disconnected.emit(how);
  }

  private _setState(state: ConnectionState): void {
    if (state !== this._state) {
      console.debug(`gradsight: ${this._state} -> ${state} (kernel ${this._kernel?.id ?? 'none'})`);
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _clientId: string;
  private _client: NonNullable<Hello['client']>;
  private _isDisposed = false;
  private _active: boolean;
  private _state: ConnectionState = 'no-notebook';
  private _session: ISessionLike | null = null;
  private _kernel: IKernelLike | null = null;
  private _conn: Connection | null = null;
  private _attempt: Connection | null = null;
  private _retry = false;
  private _executing = new Set<string>();
  private _stateChanged = new Signal<this, ConnectionState>(this);
  private _busyChanged = new Signal<this, boolean>(this);
  private _connected = new Signal<this, KernelFollower.IConnected>(this);
  private _disconnected = new Signal<this, KernelFollower.IDisconnected>(this);
}
