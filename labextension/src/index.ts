/**
 * kqi-hub in JupyterLab: "Submit as job…" (notebook toolbar, file browser menu, palette), the
 * Jobs sidebar with job views, the auto-stop forecast, the mounted inputs and the workspace
 * size in the status bar.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification,
  ToolbarButton
} from '@jupyterlab/apputils';
import { DocumentWidget } from '@jupyterlab/docregistry';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { JobView, JobsPanel, jobViewOpener } from './jobs';
import { AutoStopItem, MountedItem } from './status';
import { showErrorDialog, submitDialog } from './submit';
import { UsageItem } from './usage';

const PLUGIN_ID = 'kqi-hub-labextension:plugin';

const jobsIcon = new LabIcon({
  name: 'kqi:jobs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M4 4h16v3H4zm0 6.5h16v3H4zM4 17h10v3H4z"/>' +
    '<path class="jp-icon-brand0" fill="#1976d2" d="M17 15l5 3.5-5 3.5z"/></svg>'
});

const submittable = (path: string): boolean => /\.(ipynb|py)$/.test(path);

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Jobs, auto-stop forecast and mounted inputs of kqi-hub',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [
    ICommandPalette,
    IDefaultFileBrowser,
    IStatusBar,
    ISettingRegistry
  ],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    browser: IDefaultFileBrowser | null,
    statusBar: IStatusBar | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const { commands, shell } = app;

    // -- Jobs sidebar and job views -----------------------------------------------------------
    const actions = jobViewOpener(
      (w: MainAreaWidget<JobView>) => {
        if (!w.isAttached) {
          shell.add(w, 'main');
        }
        shell.activateById(w.id);
      },
      browser,
      () => browser && shell.activateById(browser.id)
    );
    const panel = new JobsPanel(actions);
    panel.title.icon = jobsIcon;
    panel.interval = 5;
    shell.add(panel, 'left', { rank: 600 });

    // -- Submit as job ------------------------------------------------------------------------
    const submit = async (path: string, save?: () => Promise<void>): Promise<void> => {
      if (!submittable(path)) {
        await showErrorDialog(
          'Not a notebook or script',
          `${path} cannot be submitted: choose a .ipynb notebook or a .py script.`
        );
        return;
      }
      if (save) {
        await save();
      }
      const job = await submitDialog(path);
      if (job) {
        shell.activateById(panel.id);
        await panel.refresh();
        actions.open(job);
      }
    };
    const saveIfDirty = (w: DocumentWidget) => async (): Promise<void> => {
      if (w.context.model.dirty) {
        await w.context.save();
        Notification.info(`${w.context.path} saved before submitting`, { autoClose: 3000 });
      }
    };

    commands.addCommand('kqi:submit', {
      label: 'Submit as job…',
      caption: 'Run this notebook or script as a batch job with its own resources',
      icon: jobsIcon,
      execute: async () => {
        const current = shell.currentWidget;
        if (current instanceof DocumentWidget) {
          return submit(current.context.path, saveIfDirty(current));
        }
        const nb = notebooks.currentWidget;
        if (nb) {
          return submit(nb.context.path, saveIfDirty(nb));
        }
        await showErrorDialog(
          'Nothing to submit',
          'Open a notebook or a Python script first, or use the file browser menu.'
        );
      }
    });
    commands.addCommand('kqi:submit-file', {
      label: 'Submit as job…',
      icon: jobsIcon,
      isVisible: () => {
        const item = browser?.selectedItems().next();
        return !!item && !item.done && submittable(item.value.path);
      },
      execute: async () => {
        const item = browser?.selectedItems().next();
        if (!item || item.done) {
          return;
        }
        const path = item.value.path;
        const open = notebooks.find(nb => nb.context.path === path);
        return submit(path, open ? saveIfDirty(open) : undefined);
      }
    });
    commands.addCommand('kqi:open-jobs', {
      label: 'Show jobs',
      execute: () => shell.activateById(panel.id)
    });
    for (const type of ['notebook', 'python']) {
      app.contextMenu.addItem({
        command: 'kqi:submit-file',
        selector: `.jp-DirListing-item[data-file-type="${type}"]`,
        rank: 4
      });
    }
    if (palette) {
      palette.addItem({ command: 'kqi:submit', category: 'kqi-hub' });
      palette.addItem({ command: 'kqi:open-jobs', category: 'kqi-hub' });
    }
    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (nb: NotebookPanel) => {
        const button = new ToolbarButton({
          className: 'kqi-submit-button',
          icon: jobsIcon,
          label: 'Submit as job…',
          tooltip: 'Run this notebook as a batch job',
          onClick: () => void submit(nb.context.path, saveIfDirty(nb))
        });
        nb.toolbar.insertItem(10, 'kqiSubmit', button);
        return button;
      }
    });

    // -- status bar ---------------------------------------------------------------------------
    const autoStop = new AutoStopItem();
    const mounted = new MountedItem();
    const usage = new UsageItem();
    if (statusBar) {
      statusBar.registerStatusItem('kqi-hub:auto-stop', {
        item: autoStop,
        align: 'left',
        rank: 50
      });
      statusBar.registerStatusItem('kqi-hub:mounted', {
        item: mounted,
        align: 'left',
        rank: 51
      });
      statusBar.registerStatusItem('kqi-hub:usage', {
        item: usage,
        align: 'left',
        rank: 52
      });
    }
    let started = false;
    const apply = (s: ISettingRegistry.ISettings | null): void => {
      const get = (k: string, d: number): number =>
        s ? (s.get(k).composite as number) ?? d : d;
      autoStop.warnMinutes = get('warnMinutes', 10);
      autoStop.interval = get('activitySeconds', 30);
      panel.interval = get('jobsSeconds', 5);
      usage.interval = get('usageSeconds', 60);
      started = true;
    };
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(s => {
          apply(s);
          s.changed.connect(() => apply(s));
        })
        .catch(() => apply(null));
    } else {
      apply(null);
    }
    void app.restored.then(() => {
      if (!started) {
        apply(null);
      }
      void panel.refresh();
    });
  }
};

export default plugin;
