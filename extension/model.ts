/**
 * The panel's data store: the latest decoded state of the kernel's watchers for the views,
 * announced by the `changed` signal, and the actions that request more (selectWatcher,
 * selectLayer, refresh, runGradcheck, openRecording, compareWith, selectRank, selectHeatmapMetric).
 *
 * Following the notebook's kernel and keeping the comm open is the KernelFollower's job
 * (follower.ts); the store hears of each new connection and of its end. Views never talk
 * to the kernel; they call the store's actions and re-render on `changed`.
 */
import type { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import packageInfo from '../package.json';
import { Connection, IIncoming, ProtocolRequestError } from './connection';
import {
  ICompareData,
  IHeatmapData,
  ILayerData,
  IReportsData,
  ISnapshotData,
  compareData,
  heatmapData,
  layerData,
  snapshotData
} from './data';
import { ConnectionState, IKernelLike, ISessionLike, KernelFollower } from './follower';
import { GradcheckReports, HeatmapMetric, Layer, Snapshot, Status, WatcherSummary } from './protocol';

export type { CommTargetCallback, ConnectionState, IKernelLike, ISessionLike } from './follower';

export type Change =
  | 'state'
  | 'status'
  | 'snapshot'
  | 'layer'
  | 'reports'
  | 'busy'
  | 'selection'
  | 'error'
  | 'compare'
  | 'rank'
  | 'heatmap';

/** While training pushes snapshots of A, the comparison is re-read at most this often. */
export const COMPARE_REFRESH_MS = 1000;
/** While training pushes snapshots, the layer x step heatmap is re-read at most this often. */
export const HEATMAP_REFRESH_MS = 1500;

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
    this._follower = new KernelFollower({
      clientId: options.clientId ?? `gs-${Math.random().toString(36).slice(2, 10)}`,
      client: { name: 'gradsight-jupyterlab', version: options.clientVersion ?? packageInfo.version },
      active: options.active ?? true
    });
    this._follower.stateChanged.connect(this._onState, this);
    this._follower.busyChanged.connect(() => this._emit('busy'), this);
    this._follower.connected.connect(this._onConnected, this);
    this._follower.disconnected.connect(this._onDisconnected, this);
  }

  get changed(): ISignal<this, Change> {
    return this._changed;
  }
  get isDisposed(): boolean {
    return this._isDisposed;
  }
  get state(): ConnectionState {
    return this._follower.state;
  }
  get session(): ISessionLike | null {
    return this._follower.session;
  }
  get kernel(): IKernelLike | null {
    return this._follower.kernel;
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
  /** A cell is executing (see KernelFollower.kernelBusy): gradcheck is refused. */
  get kernelBusy(): boolean {
    return this._follower.kernelBusy;
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
    return this._follower.active;
  }

  /** The source the shown one is compared with (B), or null. */
  get compareName(): string | null {
    return this._compareWith;
  }
  /** The comparison of the shown source (A) with `compareName` (B), once the kernel sent it. */
  get compare(): ICompareData | null {
    return this._compare;
  }

  /**
   * The rank shown in a torch.distributed source: the user's pick, else the rank that went wrong
   * first, else the rank whose layers the snapshot carries; null for a single process.
   */
  get rank(): number | null {
    const ranks = this._snapshot?.ranks;
    if (!ranks) {
      return null;
    }
    if (this._rank !== null && this._rank < ranks.worldSize) {
      return this._rank;
    }
    return ranks.firstBad?.rank ?? ranks.rank;
  }

  /**
   * The rank whose layer statistics the snapshot (flow chart, layer tables) carries; it differs
   * from `rank` when the source does not hold that rank's layers (a live watcher holds its own
   * process's only). Null for a single process.
   */
  get layersRank(): number | null {
    return this._snapshot?.ranks?.layersRank ?? null;
  }

  /**
   * Show this rank's figures (null: back to the default, see `rank`): its times at once, and,
   * from a source that holds every rank's layers (a recording of the job), its layer charts and
   * the layer detail (histograms and latest statistics).
   */
  async selectRank(rank: number | null): Promise<void> {
    if (rank === this._rank) {
      return;
    }
    this._rank = rank;
    this._emit('rank');
    if (this._snapshot?.ranks?.perRankLayers) {
      await this._fetchSnapshot();
    }
  }

  /** The layer x step heatmap of the shown source (and rank), once the kernel sent it. */
  get heatmap(): IHeatmapData | null {
    return this._heatmap;
  }
  get heatmapMetric(): HeatmapMetric {
    return this._heatmapMetric;
  }

  /**
   * The heatmap view has room for `columns` step columns: ask the kernel for no more (drawing
   * more columns than pixels would drop some, and a NaN step with them), and for more when a
   * thinned heatmap gets wider.
   */
  async setHeatmapColumns(columns: number): Promise<void> {
    const n = Math.max(8, Math.min(4096, Math.floor(columns)));
    const shown = this._heatmap;
    if (n === this._heatmapColumns || (shown && shown.stepSpan === 1 && shown.columns <= n)) {
      return;
    }
    this._heatmapColumns = n;
    await this._fetchHeatmap();
  }

  /** Show the heatmap of this metric; fetches it. */
  async selectHeatmapMetric(metric: HeatmapMetric): Promise<void> {
    if (metric !== this._heatmapMetric) {
      this._heatmapMetric = metric;
      this._emit('heatmap');
    }
    await this._fetchHeatmap();
  }

  /** Compare the shown source with `other` (null: stop comparing); fetches the comparison. */
  async compareWith(other: string | null): Promise<void> {
    if (other !== this._compareWith) {
      this._compareWith = other;
      this._compare = null;
      this._emit('compare');
    }
    await this._fetchCompare();
  }

  /** Visible or hidden: a hidden panel holds no comm (KernelFollower.setActive). */
  setActive(active: boolean): void {
    this._follower.setActive(active);
  }

  /** Follow this notebook's session (null: none open). */
  setSession(session: ISessionLike | null): void {
    this._follower.setSession(session);
  }

  /** Show this watcher (null: the newest); fetches its snapshot and layer detail. */
  async selectWatcher(name: string | null): Promise<void> {
    if (name !== this._watcher) {
      this._watcher = name;
      this._layer = null;
      this._layerData = null;
      this._rank = null;
      this._compare = null;
      this._heatmap = null;
      if (name !== null && name === this._compareWith) {
        this._compareWith = null; // a run compared with itself says nothing
      }
      this._emit('selection');
      this._emit('compare');
    }
    await this._fetchSnapshot();
    await this._fetchCompare();
  }

  /**
   * Ask the kernel to gs.open() the recording at `path` (server-relative: the folder or its
   * manifest.json) and show it. `notebook` is the notebook's server-relative path, from which
   * the kernel finds the server's root. Resolves to the source's name, or null on failure
   * (the reason is in `lastError`).
   */
  async openRecording(path: string, notebook: string): Promise<string | null> {
    const conn = this._conn;
    if (!conn) {
      this._lastError = 'no notebook kernel with gradsight is connected: open a notebook and run `import gradsight`';
      this._emit('error');
      return null;
    }
    let name: string;
    try {
      const reply = await conn.request({ kind: 'open_recording', path, notebook });
      if (reply.message.kind !== 'snapshot') {
        return null;
      }
      name = reply.message.watcher.name;
      this._recovered();
      this._watcher = name;
      this._layer = null;
      this._layerData = null;
      this._rank = null;
      this._heatmap = null;
      this._emit('selection');
      this._onSnapshot(reply.message, reply);
    } catch (e) {
      this._fail(e);
      return null;
    }
    try {
      const status = await conn.request({ kind: 'hello', client: this._follower.client });
      if (status.message.kind === 'status') {
        this._setStatus(status.message);
      }
    } catch (e) {
      this._fail(e);
    }
    await this._fetchLayer();
    await this._fetchHeatmap();
    return name;
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
      const reply = await conn.request({ kind: 'hello', client: this._follower.client });
      if (reply.message.kind === 'status') {
        this._setStatus(reply.message);
      }
    } catch (e) {
      this._fail(e);
      return;
    }
    await this._fetchSnapshot();
    await this._fetchCompare();
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

  /** Stops following the kernel (closes the comm) and disconnects every signal. */
  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._follower.dispose();
    Signal.clearData(this);
  }

  // -- the follower's news ----------------------------------------------------------------
  /** The comm the views' data comes through: the follower's, once adopted here. */
  private get _conn(): Connection | null {
    return this._adopted;
  }

  private _onConnected(_: KernelFollower, { connection, status }: KernelFollower.IConnected): void {
    this._adopted = connection;
    this._pushes = 0;
    connection.received.connect(this._onPush, this);
    this._setStatus(status);
    void this.refresh();
  }

  private _onDisconnected(_: KernelFollower, { keepData }: KernelFollower.IDisconnected): void {
    this._adopted?.received.disconnect(this._onPush, this);
    this._adopted = null;
    if (!keepData) {
      this._clearData();
    }
  }

  private _onState(): void {
    if (this.state !== 'connected') {
      this._lastError = null;
    }
    this._emit('state');
  }

  private _clearData(): void {
    this._status = null;
    this._snapshot = null;
    this._compare = null;
    this._heatmap = null;
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
    if (this._compareWith !== null && !names.includes(this._compareWith)) {
      this._compareWith = null; // B was closed
      this._compare = null;
      this._emit('compare');
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
    if (incoming.message.id === null && this._compareWith !== null) {
      this._maybeRefreshCompare(); // A trained on: so did its side of the comparison
    }
    if (incoming.message.id === null) {
      this._maybeRefreshHeatmap();
    }
    const ranks = this._snapshot.ranks;
    if (ranks?.perRankLayers && this.rank !== ranks.layersRank && this.rank !== this._askedRank) {
      // the rank shown by default (the one that went wrong first) was not asked for yet
      if (this._fetchingSnapshot) {
        this._snapshotStale = true;
      } else {
        void this._fetchSnapshot();
      }
    }
  }

  private _maybeRefreshHeatmap(): void {
    if (this._heatmapping || Date.now() - this._heatmapFetched < HEATMAP_REFRESH_MS) {
      return;
    }
    void this._fetchHeatmap();
  }

  /** The rank the views show, as the kernel is asked for it (null: the source's own). */
  private _wantedRank(): number | null {
    const snap = this._snapshot;
    const same = snap !== null && (this._watcher === null || snap.watcher.name === this._watcher);
    return same && snap.ranks ? this.rank : this._rank;
  }

  private async _fetchHeatmap(): Promise<void> {
    const conn = this._conn;
    const watcher = this.watcherName;
    if (!conn || watcher === null || this._heatmapping) {
      return;
    }
    const metric = this._heatmapMetric;
    const rank = this._wantedRank();
    const columns = this._heatmapColumns;
    this._heatmapping = true;
    this._heatmapFetched = Date.now();
    try {
      const reply = await conn.request({
        kind: 'get_heatmap',
        watcher,
        metric,
        rank,
        ...(columns !== null ? { max_columns: columns } : {})
      });
      const msg = reply.message;
      // the answer to a question still asked (the user may have picked another source or metric)
      if (msg.kind === 'heatmap' && msg.watcher === this.watcherName && msg.metric === this._heatmapMetric) {
        this._heatmap = heatmapData(msg, reply.buffers);
        this._recovered();
        this._emit('heatmap');
      }
    } catch (e) {
      this._fail(e);
    } finally {
      this._heatmapping = false;
    }
    if (
      this.watcherName !== watcher ||
      this._heatmapMetric !== metric ||
      this._wantedRank() !== rank ||
      this._heatmapColumns !== columns
    ) {
      await this._fetchHeatmap(); // the user changed the question while this one was asked
    }
  }

  private _maybeRefreshCompare(): void {
    const now = Date.now();
    if (this._comparing || now - this._compareFetched < COMPARE_REFRESH_MS) {
      return;
    }
    void this._fetchCompare();
  }

  private async _fetchCompare(): Promise<void> {
    const conn = this._conn;
    const a = this.watcherName;
    const b = this._compareWith;
    if (!conn || a === null || b === null || this._comparing) {
      return;
    }
    this._comparing = true;
    this._compareFetched = Date.now();
    try {
      const reply = await conn.request({ kind: 'get_compare', watcher: a, other: b });
      const msg = reply.message;
      // the answer to a question still asked (the user may have picked other runs meanwhile)
      if (
        msg.kind === 'compare' &&
        msg.runs[0].watcher.name === this.watcherName &&
        msg.runs[1].watcher.name === this._compareWith
      ) {
        this._compare = compareData(msg, reply.buffers);
        this._recovered();
        this._emit('compare');
      }
    } catch (e) {
      this._fail(e);
    } finally {
      this._comparing = false;
    }
    if (this._compareWith !== null && (this._compareWith !== b || this.watcherName !== a)) {
      await this._fetchCompare(); // the user picked other runs while this one was asked
    }
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
    const rank = this._wantedRank();
    this._askedRank = rank;
    try {
      const reply = await conn.request({ kind: 'get_snapshot', watcher: this._watcher, rank });
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
    if (this._snapshotStale) {
      this._snapshotStale = false;
      await this._fetchSnapshot(); // now for the rank shown
      return;
    }
    await this._fetchLayer();
    await this._fetchHeatmap();
  }

  private async _fetchLayer(): Promise<void> {
    const conn = this._conn;
    const watcher = this.watcherName;
    const layer = this.layerName;
    if (!conn || watcher === null || layer === null) {
      return;
    }
    try {
      // only a layer the user picked becomes the one the kernel pushes; of the rank shown
      const reply = await conn.request({
        kind: 'get_layer',
        watcher,
        layer,
        follow: this._layer !== null,
        rank: this._wantedRank()
      });
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

  private _emit(change: Change): void {
    if (!this._isDisposed) {
      this._changed.emit(change);
    }
  }

  private _follower: KernelFollower;
  private _adopted: Connection | null = null;
  private _isDisposed = false;
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
  private _compareWith: string | null = null;
  private _compare: ICompareData | null = null;
  private _comparing = false;
  private _compareFetched = 0;
  private _rank: number | null = null;
  /** The rank the last get_snapshot asked for (null: the source's own). */
  private _askedRank: number | null = null;
  private _snapshotStale = false;
  private _heatmap: IHeatmapData | null = null;
  private _heatmapMetric: HeatmapMetric = 'grad_norm';
  /** Step columns the heatmap view has room for (null: not measured yet, the kernel's default). */
  private _heatmapColumns: number | null = null;
  private _heatmapping = false;
  private _heatmapFetched = 0;
  private _changed = new Signal<this, Change>(this);
}
