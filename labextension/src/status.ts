/**
 * Status bar: the auto-stop forecast (polled from api/kqi/activity) with a notification some
 * minutes before the server is stopped, and what is mounted (api/kqi/layout).
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IActivity, ILayout, humanDuration, kqiGet } from './api';
import { PollingItem } from './polling';

/** What each cull rule means, for people. */
export const RULE_REASONS: Record<string, string> = {
  idle: 'idle: no browser access, no busy kernel and no watched program running',
  'no-access': 'no browser access for a long time',
  lifetime: "the server's chosen lifetime ends",
  uptime: 'the server has been up for the maximum time'
};

/** "auto-stop in 42 min: idle", or '' when nothing is forecast. */
export function forecastText(activity: IActivity, now = Date.now()): string {
  const f = activity.forecast;
  if (!f || !f.rule || !f.at) {
    return '';
  }
  const seconds = (Date.parse(f.at) - now) / 1000;
  if (seconds <= 0) {
    return `auto-stop due now: ${f.rule}`;
  }
  return `auto-stop in ${humanDuration(seconds)}: ${f.rule}`;
}

/** The warning before an auto-stop (JupyterLab shows toasts up to 140 characters). */
export function warningText(rule: string, seconds: number): string {
  return (
    `This server stops automatically in ${humanDuration(seconds)}: ` +
    `${RULE_SHORT[rule] || rule}. Save your work.`
  );
}

const RULE_SHORT: Record<string, string> = {
  idle: 'idle (no browser access, no busy kernel or watched program)',
  'no-access': 'no browser access for too long',
  lifetime: 'its chosen lifetime ends',
  uptime: 'maximum uptime reached'
};

export class AutoStopItem extends PollingItem {
  warnMinutes = 10;

  constructor() {
    super();
    this.addClass('kqi-autostop');
    this.node.title = 'When this server will be stopped automatically, and why';
    this.node.addEventListener('click', () => void this.details());
  }

  dispose(): void {
    window.clearInterval(this.tick);
    super.dispose();
  }

  async refresh(): Promise<void> {
    try {
      this.activity = await kqiGet<IActivity>('activity');
    } catch (e) {
      this.node.textContent = 'auto-stop: unknown';
      this.node.title = `The auto-stop forecast cannot be read: ${(e as Error).message}`;
      return;
    }
    this.render();
    window.clearInterval(this.tick);
    this.tick = window.setInterval(() => this.render(), 1000);
  }

  private render(): void {
    const text = forecastText(this.activity);
    this.node.textContent = text || 'auto-stop: none planned';
    const f = this.activity.forecast;
    if (!f || !f.rule || !f.at) {
      this.node.classList.remove('kqi-mod-soon');
      this.dismiss();
      return;
    }
    const seconds = (Date.parse(f.at) - Date.now()) / 1000;
    const soon = seconds <= this.warnMinutes * 60;
    this.node.classList.toggle('kqi-mod-soon', soon);
    const message = warningText(f.rule, seconds);
    if (soon && this.warned !== f.rule) {
      this.dismiss();
      this.warned = f.rule;
      this.warnId = Notification.warning(message, { autoClose: false });
    } else if (soon && this.warnId) {
      // keep the time in the notification current (a dismissed one stays dismissed)
      Notification.update({ id: this.warnId, message, type: 'warning', autoClose: false });
    } else if (!soon && this.warned) {
      this.dismiss(); // the server was used again: the stop moved away
    }
  }

  private dismiss(): void {
    if (this.warnId) {
      Notification.dismiss(this.warnId);
    }
    this.warnId = '';
    this.warned = '';
  }

  private async details(): Promise<void> {
    const a = this.activity;
    const when = (iso?: string | null): string => (iso ? new Date(iso).toLocaleString() : '');
    const kernels = (a.kernels || []).map(k => k.execution_state).join(', ');
    const programs = (a.watched_processes || []).map(p => `${p.name} (${p.pid})`).join(', ');
    const lines = [
      forecastText(a) || 'No auto-stop is planned.',
      a.forecast?.rule ? `Rule: ${RULE_REASONS[a.forecast.rule] || a.forecast.rule}` : '',
      a.forecast?.at ? `At: ${when(a.forecast.at)}` : '',
      `Last browser access: ${when(a.last_browser_access) || 'never'}`,
      `Kernels: ${kernels || 'none'}`,
      `Watched programs running: ${programs || 'none'}`
    ];
    const body = document.createElement('pre');
    body.className = 'kqi-details';
    body.textContent = lines.filter(Boolean).join('\n');
    await showDialog({
      title: 'Auto-stop',
      body: new Widget({ node: body }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
  }

  private activity: IActivity = {};
  private warned = '';
  private warnId = '';
  private tick = 0;
}

/** Lines describing what is mounted and which home links are missing, and why. */
export function layoutLines(layout: ILayout): string[] {
  const lines: string[] = [];
  for (const d of layout.datasets) {
    lines.push(`dataset ${d}: ~/input/${d}`);
  }
  if (layout.parent) {
    lines.push(`parent job #${layout.parent}: ~/parent`);
  }
  if (layout.inference) {
    lines.push(`inference job #${layout.inference}: ~/inference`);
  }
  for (const l of layout.home_links) {
    if (l.status === 'refused') {
      lines.push(`~/${l.name} not linked: ${l.reason}`);
    }
  }
  return lines;
}

export class MountedItem extends Widget {
  constructor() {
    super();
    this.addClass('kqi-mounted');
    this.node.addEventListener('click', () => void this.details());
    void this.refresh();
  }

  async refresh(): Promise<void> {
    try {
      this.state = await kqiGet<ILayout>('layout');
    } catch (e) {
      this.node.textContent = 'mounted: unknown';
      this.node.title = (e as Error).message;
      return;
    }
    const l = this.state;
    const parts: string[] = [];
    if (l.datasets.length) {
      parts.push(`${l.datasets.length} dataset${l.datasets.length > 1 ? 's' : ''}`);
    }
    if (l.parent) {
      parts.push(`parent #${l.parent}`);
    }
    if (l.inference) {
      parts.push(`inference #${l.inference}`);
    }
    const refused = l.home_links.filter(h => h.status === 'refused').length;
    this.node.textContent =
      `mounted: ${parts.join(', ') || 'nothing'}` + (refused ? ` (${refused} link refused)` : '');
    this.node.classList.toggle('kqi-mod-refused', refused > 0);
    this.node.title = layoutLines(l).join('\n') || 'No datasets or jobs are mounted';
  }

  private async details(): Promise<void> {
    await this.refresh();
    const body = document.createElement('pre');
    body.className = 'kqi-details';
    body.textContent =
      (this.state ? layoutLines(this.state).join('\n') : '') ||
      'No datasets or jobs are mounted. Choose them on the spawn page.';
    await showDialog({
      title: 'Mounted inputs',
      body: new Widget({ node: body }),
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
  }

  private state: ILayout | null = null;
}
