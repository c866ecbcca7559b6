/**
 * gradsight's JupyterLab extension: wires the Gradients panel into the right sidebar,
 * points its model at the active notebook's session, and registers the commands.
 * Everything else lives in follower.ts (following the kernel), model.ts (the data store)
 * and views/ (rendering).
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';

import { gradsightIcon } from './icon';
import { GradientsModel } from './model';
import { GradientsOpener } from './opener';
import { OPEN_RECORDING, registerRecordingOpener } from './recording';
import { GradientsPanel } from './views/panel';

export const PANEL_ID = 'gradsight-panel';

namespace CommandIDs {
  export const open = 'gradsight:open';
  export const refresh = 'gradsight:refresh';
  export const runGradcheck = 'gradsight:run-gradcheck';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'gradsight:plugin',
  description:
    'A "Gradients" panel beside the notebook: live per-layer gradients, findings, histograms and gradchecks.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer, IFileBrowserFactory],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    browsers: IFileBrowserFactory | null
  ) => {
    const model = new GradientsModel({ active: false });
    const panel = new GradientsPanel(model);
    panel.id = PANEL_ID;
    panel.title.icon = gradsightIcon;
    panel.title.caption = 'Gradients (gradsight)';
    panel.title.label = 'Gradients';
    app.shell.add(panel, 'right', { rank: 900 });
    restorer?.add(panel, PANEL_ID);

    const follow = (): void => model.setSession(tracker.currentWidget?.sessionContext ?? null);
    tracker.currentChanged.connect(follow);
    follow();

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show the Gradients panel',
      icon: gradsightIcon,
      execute: () => app.shell.activateById(PANEL_ID)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh the Gradients panel',
      execute: () => model.refresh()
    });
    app.commands.addCommand(CommandIDs.runGradcheck, {
      label: 'Run gradcheck on the selected layer',
      isEnabled: () => model.state === 'connected' && !model.kernelBusy && model.layerName !== null,
      execute: () => model.runGradcheck()
    });
    model.changed.connect(() => app.commands.notifyCommandChanged(CommandIDs.runGradcheck));
    registerRecordingOpener(app, model, tracker, browsers, PANEL_ID, gradsightIcon);
    app.docRegistry.addWidgetFactory(
      new GradientsOpener(path => app.commands.execute(OPEN_RECORDING, { path }) as Promise<string | null>)
    );
    if (palette) {
      const category = 'gradsight';
      for (const command of [CommandIDs.open, CommandIDs.refresh, CommandIDs.runGradcheck]) {
        palette.addItem({ command, category });
      }
    }
  }
};

export default plugin;
