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
    // refreshes overlap (the timer, showing the panel, a submission): an answer to an older
    // request arriving after a newer one's is dropped, so an older list never comes back
    const seq = ++this.sent;
    let jobs: IJob[];
    try {
      jobs = await kqiGet<IJob[]>('jobs');
    } catch (e) {
      if (seq > this.shown) {
        this.shown = seq;
        this.error.textContent = `Jobs cannot be listed: ${(e as Error).message}`;
      }
      return;
    }
    if (seq < this.shown || this.isDisposed) {
      return;
    }
    this.shown = seq;
    this.error.textContent = '';
    jobs.sort((a, b) => b.id - a.id);
    this.render(jobs);
  }

  /**
   * Show `jobs`, newest first. A job's row stays the same element from one refresh to the
   * next (only its text changes), so a row being clicked or hovered is not replaced under
   * the pointer every few seconds.
   */
  private render(jobs: IJob[]): void {
    this.jobs = new Map(jobs.map(j => [j.id, j]));
    if (!jobs.length) {
      this.rows.clear();
      this.list.textContent = '';
      this.list.appendChild(
        el('li', 'kqi-empty', 'No jobs yet. Use "Submit as job…" on a notebook or script.')
      );
      return;
    }
    for (const node of Array.from(this.list.children)) {
      const id = Number((node as HTMLElement).dataset.jobId);
      if (!this.jobs.has(id)) {
        node.remove();
        this.rows.delete(id);
      }
    }
    let next: ChildNode | null = this.list.firstChild;
    for (const job of jobs) {
      const li = this.row(job);
      if (li !== next) {
        this.list.insertBefore(li, next);
      } else {
        next = next.nextSibling;
      }
    }
  }

  /** The row of `job` (made on first sight), showing it as it is now. */
  private row(job: IJob): HTMLLIElement {
    let li = this.rows.get(job.id);
    if (!li) {
      li = el('li', 'kqi-job-row');
      li.dataset.jobId = String(job.id);
      const id = job.id;
      li.addEventListener('click', () => {
        const current = this.jobs.get(id);
        if (current) {
          this.actions.open(current);
        }
      });
      this.rows.set(job.id, li);
    }
    const shows = JSON.stringify([job, jobDuration(job)]);
    if (li.dataset.shows === shows) {
      return li;
    }
    li.dataset.shows = shows;
    li.title = `${job.command || ''}\nclick to open`;
    const first = el('div', 'kqi-job-line');
    first.appendChild(el('span', 'kqi-job-id', `#${job.id}`));
    first.appendChild(el('span', 'kqi-job-name', job.name));
    const second = el('div', 'kqi-job-line');
    second.appendChild(el('span', `kqi-status kqi-status-${job.status}`, job.status));
    second.appendChild(el('span', 'kqi-job-duration', jobDuration(job)));
    if (job.created_at) {
      second.appendChild(el('span', 'kqi-job-created', shortTime(job.created_at)));
    }
    li.replaceChildren(first, second);
    return li;
  }

  private timer = 0;
  private sent = 0; // requests for the list sent
  private shown = 0; // the newest of them whose answer is shown
  private jobs = new Map<number, IJob>();
  private readonly rows = new Map<number, HTMLLIElement>();
  private readonly list: HTMLUListElement;
  private readonly error: HTMLDivElement;
}

/** One job: its facts, actions and live log. */
export class JobView extends Widget {
  // The keyboard focus comes with activation: its MainAreaWidget makes this node focusable
  // and focuses it whenever the tab is activated.
  constructor(
    private job: IJob,
    private readonly actions: IJobActions,
    private readonly browser: IDefaultFileBrowser | null,
    private readonly showBrowser: () => void
  ) {
    super();
    this.id = `kqi-job-${job.id}`;
    this.addClass('kqi-job-view');
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

  /** Whether the answer to request `seq` is newer than the one shown (and to be shown). */
  private fresh(seq: number): boolean {
    if (seq < this.shown || this.isDisposed) {
      return false;
    }
    this.shown = seq;
    return true;
  }

  /** Take a newer state of the job; a finished job does not go back to an older state. */
  private take(job: IJob): void {
    if (FINISHED.includes(this.job.status) && !FINISHED.includes(job.status)) {
      return;
    }
    this.job = job;
    this.render();
    if (FINISHED.includes(job.status)) {
      window.clearInterval(this.timer);
    }
  }

  private async poll(): Promise<void> {
    // a hidden tab asks nothing: its requests would count as use of the server (auto-stop)
    if (this.isDisposed || document.hidden) {
      return;
    }
    // polls overlap (the timer, the end of the log, Stop): an answer to an older request
    // arriving after a newer one's must not put back the state it had (e.g. "running" after
    // "succeeded", with the timer already stopped: the view would stay "running")
    const seq = ++this.sent;
    try {
      const job = await kqiGet<IJob>(`jobs/${this.job.id}`);
      if (this.fresh(seq)) {
        this.error.textContent = '';
        this.take(job);
      }
    } catch (e) {
      if (this.fresh(seq)) {
        this.error.textContent = `Job status unknown: ${(e as Error).message}`;
      }
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
    const seq = ++this.sent; // a poll under way may answer with the state before the stop
    try {
      const job = await kqiPost<IJob>(`jobs/${this.job.id}/stop`);
      if (this.fresh(seq)) {
        this.take(job);
      }
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
  private sent = 0; // requests for the job's state sent
  private shown = 0; // the newest of them whose answer is shown
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
