/**
 * The "Gradients" sidebar panel: a header and the sections stacked in a scrolling body.
 * Visibility drives the model: a hidden panel holds no comm, so costs the kernel nothing.
 */
import { refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';

import type { GradientsModel } from '../model';
import { CompareView } from './compare';
import { FindingsView } from './findings';
import { FlowView } from './flow';
import { GradcheckView } from './gradcheck';
import { h } from './dom';
import { HeatmapView } from './heatmap';
import { LayerView } from './layer';
import { RanksView } from './ranks';
import { StatusView } from './status';

export class GradientsPanel extends Panel {
  constructor(readonly model: GradientsModel) {
    super();
    this.addClass('jp-gradsight-panel');
    const refresh = h('button', {
      class: 'jp-gradsight-icon-button',
      title: 'Refresh from the kernel',
      'aria-label': 'Refresh'
    });
    refreshIcon.element({ container: refresh, height: '16px', width: '16px' });
    refresh.onclick = () => void model.refresh();
    const header = new Widget({ node: h('div', { class: 'jp-gradsight-header' }, h('h2', {}, 'Gradients'), refresh) });
    const body = new Panel();
    body.addClass('jp-gradsight-body');
    for (const view of [
      new StatusView(model),
      new RanksView(model),
      new FindingsView(model),
      new FlowView(model),
      new HeatmapView(model),
      new CompareView(model),
      new LayerView(model),
      new GradcheckView(model)
    ]) {
      body.addWidget(view);
    }
    this.addWidget(header);
    this.addWidget(body);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.setActive(true);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.setActive(false);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this.model.setActive(this.isVisible);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    super.dispose(); // disposes the section views, which disconnect from the model
    this.model.dispose();
  }
}
