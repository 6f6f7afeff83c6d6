/**
 * The "Jobs" sidebar (the user's jobs, refreshed) and a job's view in the main area: live log,
 * stop, continue, open the output folder.
 */
import { Dialog, MainAreaWidget, Notification, showDialog } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { Widget } from '@lumino/widgets';

import {
  FINISHED,
  IJob,
  followLog,
  jobDuration,
  kqiGet,
  kqiPost
} from './api';
import { showErrorDialog } from './submit';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function button(label: string, cls: string, onClick: () => void): HTMLButtonElement {
  const b = el('button', `jp-Button jp-mod-styled ${cls}`, label);
  b.addEventListener('click', onClick);
  return b;
}

/** "10:18" today, "Nov 25 10:18" before. */
function shortTime(iso: string): string {
  const d = new Date(iso);
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === new Date().toDateString()) {
    return hm;
  }
  return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${hm}`;
}

export interface IJobActions {
  open(job: IJob): void;
}

/** The sidebar: one row per job, newest first. */
export class JobsPanel extends Widget {
  constructor(private readonly actions: IJobActions) {
    super();
    this.id = 'kqi-jobs';
    this.addClass('kqi-jobs');
    this.title.caption = 'Jobs';
    const head = el('div', 'kqi-jobs-head');
    head.appendChild(el('h2', '', 'Jobs'));
    head.appendChild(button('Refresh', 'kqi-refresh', () => void this.refresh()));
    this.node.appendChild(head);
    this.error = el('div', 'kqi-error');
    this.node.appendChild(this.error);
    this.list = el('ul', 'kqi-job-list');
    this.node.appendChild(this.list);
  }

  set interval(seconds: number) {
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => {
      if (this.isVisible && !document.hidden) {
        void this.refresh();
      }
    }, seconds * 1000);
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  async refresh(): Promise<void> {
    let jobs: IJob[];
    try {
      jobs = await kqiGet<IJob[]>('jobs');
      this.error.textContent = '';
    } catch (e) {
      this.error.textContent = `Jobs cannot be listed: ${(e as Error).message}`;
      return;
    }
    jobs.sort((a, b) => b.id - a.id);
    this.list.textContent = '';
    if (!jobs.length) {
      this.list.appendChild(
        el('li', 'kqi-empty', 'No jobs yet. Use "Submit as job…" on a notebook or script.')
      );
    }
    for (const job of jobs) {
      const li = el('li', 'kqi-job-row');
      li.dataset.jobId = String(job.id);
      li.title = `${job.command || ''}\nclick to open`;
      const first = el('div', 'kqi-job-line');
      first.appendChild(el('span', 'kqi-job-id', `#${job.id}`));
      first.appendChild(el('span', 'kqi-job-name', job.name));
      li.appendChild(first);
      const second = el('div', 'kqi-job-line');
      second.appendChild(el('span', `kqi-status kqi-status-${job.status}`, job.status));
      second.appendChild(el('span', 'kqi-job-duration', jobDuration(job)));
      if (job.created_at) {
        second.appendChild(
          el('span', 'kqi-job-created', shortTime(job.created_at))
        );
      }
      li.appendChild(second);
      li.addEventListener('click', () => this.actions.open(job));
      this.list.appendChild(li);
    }
  }

  private timer = 0;
  private readonly list: HTMLUListElement;
  private readonly error: HTMLDivElement;
}

/** One job: its facts, actions and live log. */
export class JobView extends Widget {
  /**
   * Take the focus when activated. Left where it was (the notebook's "Submit as job…"
   * button), the focus made the notebook current again and its tab came back to the front,
   * hiding the job just opened; keystrokes went to the hidden notebook.
   */
  protected onActivateRequest(): void {
    if (!this.node.contains(document.activeElement)) {
      this.node.focus();
    }
  }

  constructor(
    private job: IJob,
    private readonly actions: IJobActions,
    private readonly browser: IDefaultFileBrowser | null,
    private readonly showBrowser: () => void
  ) {
    super();
    this.id = `kqi-job-${job.id}`;
    this.addClass('kqi-job-view');
    this.node.tabIndex = -1; // focusable: activating the view moves the keyboard focus here
    this.head = el('div', 'kqi-job-facts');
    this.node.appendChild(this.head);
    const bar = el('div', 'kqi-job-actions');
    this.stopButton = button('Stop', 'jp-mod-warn kqi-stop', () => void this.stop());
    bar.appendChild(this.stopButton);
    bar.appendChild(button('Continue…', 'kqi-continue', () => void this.continue()));
    bar.appendChild(button('Open output folder', 'kqi-open-output', () => void this.openOutput()));
    this.node.appendChild(bar);
    this.error = el('div', 'kqi-error');
    this.node.appendChild(this.error);
    this.log = el('pre', 'kqi-log');
    this.node.appendChild(this.log);
    this.render();
    void this.startLog();
    this.timer = window.setInterval(() => void this.poll(), 2000);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    this.abort.abort();
    super.dispose();
  }

  private render(): void {
    const j = this.job;
    this.title.label = `Job #${j.id} ${j.name}`;
    this.head.textContent = '';
    const facts: [string, string][] = [
      ['Status', j.status + (typeof j.exit_code === 'number' ? ` (exit ${j.exit_code})` : '')],
      ['Duration', jobDuration(j) || '—'],
      ['Command', j.command || ''],
      ['Profile', j.profile || ''],
      ['Datasets', (j.datasets || []).join(', ') || '—'],
      ['Continued from', j.continued_from ? `#${j.continued_from}` : '—'],
      ['Message', j.message || '']
    ];
    const dl = el('dl');
    for (const [k, v] of facts) {
      if (!v) {
        continue;
      }
      dl.appendChild(el('dt', '', k));
      const dd = el('dd', k === 'Status' ? `kqi-status kqi-status-${j.status}` : '', v);
      dl.appendChild(dd);
    }
    this.head.appendChild(dl);
    this.stopButton.disabled = FINISHED.includes(j.status);
  }

  private async poll(): Promise<void> {
    // a hidden tab asks nothing: its requests would count as use of the server (auto-stop)
    if (this.isDisposed || document.hidden) {
      return;
    }
    try {
      this.job = await kqiGet<IJob>(`jobs/${this.job.id}`);
      this.render();
      if (FINISHED.includes(this.job.status)) {
        window.clearInterval(this.timer);
      }
    } catch (e) {
      this.error.textContent = `Job status unknown: ${(e as Error).message}`;
    }
  }

  private async startLog(): Promise<void> {
    this.log.textContent = '';
    try {
      await followLog(
        this.job.id,
        text => {
          const bottom =
            this.log.scrollTop + this.log.clientHeight >= this.log.scrollHeight - 4;
          this.log.textContent += text;
          if (bottom) {
            this.log.scrollTop = this.log.scrollHeight;
          }
        },
        this.abort.signal
      );
      this.log.dataset.complete = 'true';
      void this.poll();
    } catch (e) {
      if (!this.abort.signal.aborted) {
        this.error.textContent = `The log cannot be read: ${(e as Error).message}`;
      }
    }
  }

  private async stop(): Promise<void> {
    this.error.textContent = '';
    try {
      this.job = await kqiPost<IJob>(`jobs/${this.job.id}/stop`);
      this.render();
      Notification.info(`Job #${this.job.id} is stopping`, { autoClose: 4000 });
    } catch (e) {
      this.error.textContent = `The job was not stopped: ${(e as Error).message}`;
    }
  }

  private async continue(): Promise<void> {
    const body = el('div', 'kqi-form');
    const cmdLabel = el('label', 'kqi-row');
    cmdLabel.appendChild(el('span', 'kqi-label', 'Command'));
    const cmd = el('input');
    cmd.name = 'command';
    cmd.type = 'text';
    cmd.value = this.job.command || '';
    cmdLabel.appendChild(cmd);
    body.appendChild(cmdLabel);
    const copyLabel = el('label', 'kqi-check');
    const copy = el('input');
    copy.type = 'checkbox';
    copy.name = 'copy_output';
    copyLabel.appendChild(copy);
    copyLabel.appendChild(
      document.createTextNode(' Copy the output into the new job\'s /kqi/output')
    );
    body.appendChild(copyLabel);
    body.appendChild(
      el(
        'p',
        'kqi-hint',
        `The new job gets the same datasets and code; job #${this.job.id}'s output is ` +
          'mounted read-only at /kqi/parent. This job is not changed.'
      )
    );
    const result = await showDialog({
      title: `Continue job #${this.job.id}`,
      body: new Widget({ node: body }),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Continue' })]
    });
    if (!result.button.accept) {
      return;
    }
    const request: { copy_output: boolean; command?: string } = { copy_output: copy.checked };
    if (cmd.value.trim() && cmd.value.trim() !== (this.job.command || '')) {
      request.command = cmd.value.trim();
    }
    try {
      const job = await kqiPost<IJob>(`jobs/${this.job.id}/continue`, request);
      Notification.success(`Job #${job.id} continues #${this.job.id}`, { autoClose: 5000 });
      this.actions.open(job);
    } catch (e) {
      await showErrorDialog('The job was not continued', (e as Error).message);
    }
  }

  private async openOutput(): Promise<void> {
    const path = `jobs/${this.job.id}/output`;
    if (!this.browser) {
      this.error.textContent = 'There is no file browser to open it in.';
      return;
    }
    try {
      await this.browser.model.cd(`/${path}`);
      this.showBrowser();
    } catch (e) {
      this.error.textContent = `~/${path} cannot be opened: ${(e as Error).message}`;
    }
  }

  private timer = 0;
  private readonly abort = new AbortController();
  private readonly head: HTMLDivElement;
  private readonly log: HTMLPreElement;
  private readonly error: HTMLDivElement;
  private readonly stopButton: HTMLButtonElement;
}

/** Open (or bring forward) a job's view in the main area. */
export function jobViewOpener(
  add: (w: MainAreaWidget<JobView>) => void,
  browser: IDefaultFileBrowser | null,
  showBrowser: () => void
): IJobActions {
  const open = new Map<number, MainAreaWidget<JobView>>();
  const actions: IJobActions = {
    open(job: IJob): void {
      const existing = open.get(job.id);
      if (existing && !existing.isDisposed) {
        add(existing);
        return;
      }
      const content = new JobView(job, actions, browser, showBrowser);
      const widget = new MainAreaWidget({ content });
      widget.id = `kqi-job-view-${job.id}`;
      widget.title.label = content.title.label;
      widget.title.closable = true;
      content.title.changed.connect(() => (widget.title.label = content.title.label));
      open.set(job.id, widget);
      add(widget);
    }
  };
  return actions;
}
