/**
 * Base of the panel's sections: a widget that re-renders when the model reports one of
 * the changes it cares about, at most once per animation frame (pushes arrive in bursts).
 */
import { Widget } from '@lumino/widgets';

import type { Change, GradientsModel } from '../model';
import { h, replaceChildren } from './dom';

export abstract class SectionView extends Widget {
  constructor(
    protected readonly model: GradientsModel,
    title: string,
    cls: string,
    private readonly _watch: readonly Change[]
  ) {
    super();
    this.addClass('jp-gradsight-section');
    this.addClass(cls);
    this.titleNode = h('h3', { class: 'jp-gradsight-section-title' }, title);
    this.body = h('div', { class: 'jp-gradsight-section-body' });
    this.node.append(this.titleNode, this.body);
    model.changed.connect(this._onChange, this);
  }

  /** Draw the section from the model's current state. */
  protected abstract render(): void;

  /** Whether the section has anything to say in the model's current state. */
  protected isRelevant(): boolean {
    return this.model.state === 'connected' && this.model.watchers.length > 0;
  }

  update(): void {
    if (this._frame === 0) {
      this._frame = requestAnimationFrame(() => {
        this._frame = 0;
        if (this.isDisposed) {
          return;
        }
        const relevant = this.isRelevant();
        this.setHidden(!relevant);
        if (relevant) {
          this.render();
        }
      });
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    if (this._frame !== 0) {
      cancelAnimationFrame(this._frame);
    }
    this.model.changed.disconnect(this._onChange, this);
    super.dispose();
  }

  protected setBody(...children: (Node | string | null)[]): void {
    replaceChildren(this.body, ...children);
  }

  private _onChange(_: GradientsModel, change: Change): void {
    if (change === 'state' || this._watch.includes(change)) {
      this.update();
    }
  }

  protected readonly titleNode: HTMLElement;
  protected readonly body: HTMLElement;
  private _frame = 0;
}
