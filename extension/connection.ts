/**
 * One comm with the kernel: sends requests with ids, resolves them with the reply of the
 * same id, and emits pushes (id null) and the comm's end as signals.
 *
 * It knows nothing about notebooks or views; the model decides when to open and drop
 * connections.
 */
import type { JSONObject, JSONValue } from '@lumino/coreutils';
import type { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  Buffer,
  ErrorReply,
  Hello,
  makeRequest,
  Reply,
  RequestBody,
  Status,
  isReply,
  toJSON,
  whyInvalid
} from './protocol';

/** The comm message fields this code reads (Kernel.IComm's messages have them). */
export interface ICommMsgLike {
  content: { comm_id: string; data: JSONValue };
  buffers?: Buffer[];
}

/** What a connection needs of a comm; Kernel.IComm satisfies it (methods: bivariant). */
export interface ICommLike {
  readonly commId: string;
  readonly isDisposed: boolean;
  /** JupyterLab's CommHandler: resolves once its subshell exists (never, without subshells). */
  readonly subshellStarted?: Promise<void>;
  onMsg(msg: ICommMsgLike): void | PromiseLike<void>;
  onClose(msg: ICommMsgLike): void | PromiseLike<void>;
  open(data?: JSONValue, metadata?: JSONObject, buffers?: Buffer[]): unknown;
  send(data: JSONValue, metadata?: JSONObject, buffers?: Buffer[], disposeOnDone?: boolean): unknown;
  close(data?: JSONValue, metadata?: JSONObject, buffers?: Buffer[]): unknown;
  dispose(): void;
}

export interface IIncoming {
  readonly message: Reply;
  readonly buffers: readonly Buffer[];
}

/** A request that got an `error` reply, or never got a reply because the comm closed. */
export class ProtocolRequestError extends Error {
  constructor(
    message: string,
    readonly code: ErrorReply['code'] | 'closed'
  ) {
    super(message);
  }
}

let counter = 0;

export class Connection implements IDisposable {
  /**
   * `clientId` prefixes request ids, so replies broadcast to several panels never collide.
   * Nothing is sent before `ready` resolves: JupyterLab sends a comm's messages over its
   * subshell once that exists, and a message sent earlier waits behind the running cell.
   */
  constructor(
    readonly comm: ICommLike,
    readonly clientId: string,
    ready: Promise<void> = Promise.resolve()
  ) {
    this._ready = ready;
    comm.onMsg = (msg: ICommMsgLike) => this._onMsg(msg);
    comm.onClose = () => this._onClose();
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  get isClosed(): boolean {
    return this._closedFlag;
  }

  /** Replies and pushes, after validation; invalid messages are dropped with a warning. */
  get received(): ISignal<this, IIncoming> {
    return this._received;
  }

  /** The kernel closed the comm (target missing, kernel shut down) or we did. */
  get closed(): ISignal<this, void> {
    return this._closed;
  }

  get invalidCount(): number {
    return this._invalid;
  }

  /** Open the comm with a `hello` as its data; resolves with the kernel's `status`. */
  async open(client: Hello['client']): Promise<Status> {
    await this._ready;
    if (this._closedFlag) {
      throw new ProtocolRequestError('the comm is closed', 'closed');
    }
    const req = makeRequest(this._nextId(), { kind: 'hello', client });
    const reply = this._expect(req.id);
    this.comm.open(toJSON(req));
    return this._as<Status>((await reply).message, 'status');
  }

  /** Send one request; resolves with its reply, rejects with ProtocolRequestError. */
  async request(body: RequestBody): Promise<IIncoming> {
    await this._ready;
    if (this._closedFlag) {
      throw new ProtocolRequestError('the comm is closed', 'closed');
    }
    const req = makeRequest(this._nextId(), body);
    const reply = this._expect(req.id);
    try {
      this.comm.send(toJSON(req));
    } catch (e) {
      this._settle(req.id, new ProtocolRequestError(`could not send: ${String(e)}`, 'closed'));
    }
    return reply;
  }

  /** Handle a message that arrived outside onMsg (the data of a kernel-opened comm). */
  receive(data: JSONValue, buffers: readonly Buffer[] = []): void {
    this._onMsg({ content: { comm_id: this.comm.commId, data }, buffers: [...buffers] });
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    if (!this._closedFlag && !this.comm.isDisposed) {
      try {
        this.comm.close();
      } catch {
        // the kernel connection is gone already
      }
    }
    this._onClose();
    Signal.clearData(this);
  }

  private _nextId(): string {
    counter += 1;
    return `${this.clientId}:${counter}`;
  }

  private _expect(id: string): Promise<IIncoming> {
    return new Promise<IIncoming>((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
    });
  }

  private _as<T extends Reply>(message: Reply, kind: T['kind']): T {
    if (message.kind !== kind) {
      throw new ProtocolRequestError(`expected ${kind}, got ${message.kind}`, 'bad_message');
    }
    return message as T;
  }

  private _settle(id: string, result: IIncoming | ProtocolRequestError): void {
    const p = this._pending.get(id);
    if (!p) {
      return;
    }
    this._pending.delete(id);
    if (result instanceof ProtocolRequestError) {
      p.reject(result);
    } else {
      p.resolve(result);
    }
  }

  private _onMsg(msg: ICommMsgLike): void {
    const data = msg.content.data;
    if (!isReply(data)) {
      this._invalid += 1;
      const why = whyInvalid(data) ?? 'not a reply kind';
      console.warn(`gradsight: dropped an invalid message from the kernel: ${why}`);
      const id = (data as { id?: unknown } | null)?.id;
      if (typeof id === 'string' && this._pending.has(id)) {
        // answer the waiting request rather than leave it pending forever
        this._settle(id, new ProtocolRequestError(`invalid reply from the kernel: ${why}`, 'bad_message'));
      }
      return;
    }
    const incoming: IIncoming = { message: data, buffers: msg.buffers ?? [] };
    if (data.id !== null && this._pending.has(data.id)) {
      if (data.kind === 'error') {
        this._settle(data.id, new ProtocolRequestError(data.message, data.code));
      } else {
        this._settle(data.id, incoming);
      }
      return;
    }
    if (data.id === null) {
      this._received.emit(incoming);
    }
    // a reply to another panel's request (iopub is broadcast): not ours, ignore
  }

  private _onClose(): void {
    if (this._closedFlag) {
      return;
    }
    this._closedFlag = true;
    for (const id of [...this._pending.keys()]) {
      this._settle(id, new ProtocolRequestError('the kernel closed the gradsight comm', 'closed'));
    }
    this._closed.emit();
  }

  private _ready: Promise<void>;
  private _isDisposed = false;
  private _closedFlag = false;
  private _invalid = 0;
  private _pending = new Map<string, { resolve: (r: IIncoming) => void; reject: (e: Error) => void }>();
  private _received = new Signal<this, IIncoming>(this);
  private _closed = new Signal<this, void>(this);
}
