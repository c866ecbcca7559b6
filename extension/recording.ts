/**
 * Opening a recording from the file browser: a file type for its manifest.json, and the
 * command `gradsight:open-recording` (file browser context menu: "Open in Gradients panel",
 * and "Open With → Gradients") that asks the current notebook's kernel to gs.open() it and
 * selects it in the panel.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import type { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import type { INotebookTracker } from '@jupyterlab/notebook';
import type { LabIcon } from '@jupyterlab/ui-components';

import type { GradientsModel } from './model';

export const OPEN_RECORDING = 'gradsight:open-recording';
export const RECORDING_FILE_TYPE = 'gradsight-recording';
/** The manifest's file name (docs/recording-format.md). */
export const MANIFEST = 'manifest.json';

/** What the command needs from the page: kept apart so that it is testable without JupyterLab. */
export interface IOpenContext {
  model: Pick<GradientsModel, 'openRecording'>;
  /** The server-relative path of the notebook whose kernel opens it (null: none open). */
  notebookPath: string | null;
  showPanel: () => void;
}

/** The path the file browser names, or an error message for the user. */
export function checkRecordingPath(path: unknown): string | null {
  return typeof path === 'string' && path.length > 0 ? path : null;
}

/** gs.open() `path` in the notebook's kernel and show it; resolves to the source name or null. */
export async function openRecording(path: unknown, ctx: IOpenContext): Promise<string | null> {
  const checked = checkRecordingPath(path);
  if (checked === null) {
    throw new Error('gradsight:open-recording needs the path of a recording folder or of its manifest.json');
  }
  if (ctx.notebookPath === null) {
    throw new Error(
      `Open a notebook first: its kernel opens ${checked} (or run rec = gs.open(${JSON.stringify(checked)}) in it).`
    );
  }
  ctx.showPanel();
  return ctx.model.openRecording(checked, ctx.notebookPath);
}

export function registerRecordingOpener(
  app: JupyterFrontEnd,
  model: GradientsModel,
  tracker: INotebookTracker,
  browsers: IFileBrowserFactory | null,
  panelId: string,
  icon: LabIcon
): void {
  app.docRegistry.addFileType({
    name: RECORDING_FILE_TYPE,
    displayName: 'gradsight recording',
    extensions: [],
    pattern: `^${MANIFEST.replace('.', '\\.')}$`,
    mimeTypes: ['application/json'],
    contentType: 'file',
    fileFormat: 'text',
    icon
  });
  app.commands.addCommand(OPEN_RECORDING, {
    label: 'Open in Gradients panel',
    caption: "gs.open() this recording in the current notebook's kernel and show it in the Gradients panel",
    icon,
    execute: async args => {
      let path = args.path;
      if (path === undefined && browsers) {
        path = browsers.tracker.currentWidget?.selectedItems().next().value?.path;
      }
      return openRecording(path, {
        model,
        notebookPath: tracker.currentWidget?.context.path ?? null,
        showPanel: () => app.shell.activateById(panelId)
      });
    }
  });
  app.contextMenu.addItem({
    command: OPEN_RECORDING,
    selector: `.jp-DirListing-item[data-file-type="${RECORDING_FILE_TYPE}"]`,
    rank: 1
  });
}
