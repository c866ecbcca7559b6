/**
 * The "Gradients" entry of the file browser's Open With menu on a recording's manifest.json
 * (kept apart from recording.ts: @jupyterlab/docregistry only loads inside JupyterLab).
 */
import { ABCWidgetFactory, DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
import { Widget } from '@lumino/widgets';

import { RECORDING_FILE_TYPE } from './recording';

/**
 * "Open With → Gradients": the Open With menu lists widget factories, so this one opens the
 * recording in the panel and closes its own tab once the kernel has it (on failure the tab
 * stays and says why).
 */
export class GradientsOpener extends ABCWidgetFactory<DocumentWidget> {
  constructor(private readonly _open: (path: string) => Promise<string | null>) {
    super({ name: 'Gradients', label: 'Gradients', fileTypes: [RECORDING_FILE_TYPE], defaultFor: [] });
  }

  protected createNewWidget(context: DocumentRegistry.Context): DocumentWidget {
    const content = new Widget();
    content.addClass('jp-gradsight-recording-opener');
    content.node.textContent = `Opening ${context.path} in the Gradients panel…`;
    const widget = new DocumentWidget({ content, context });
    this._open(context.path).then(
      name => {
        if (name === null) {
          content.node.textContent = `Could not open ${context.path}: see the Gradients panel.`;
        } else {
          widget.close();
        }
      },
      e => {
        content.node.textContent = e instanceof Error ? e.message : String(e);
      }
    );
    return widget;
  }
}
