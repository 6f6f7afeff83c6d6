/**
 * Status bar: the workspace size the kqi service measured last (api/kqi/usage, against this
 * server's profile), refreshed periodically; marked when it is over the profile's storage.
 */
import { IUsage, kqiGet } from './api';
import { PollingItem } from './polling';

/** "workspace: 1.2 GiB of 100 GiB". */
export function usageText(u: IUsage): string {
  return `workspace: ${sizeText(u.bytes)} of ${sizeText(u.quota)}`;
}

/** "512 B", "60 MiB", "1.2 GiB": binary units, one decimal at most (as the service says). */
export function sizeText(n: number): string {
  if (Math.abs(n) < 1024) {
    return `${Math.round(n)} B`;
  }
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  for (const unit of units) {
    n /= 1024;
    if (Math.abs(Math.round(n * 10) / 10) < 1024 || unit === 'PiB') {
      return `${(Math.round(n * 10) / 10).toString()} ${unit}`;
    }
  }
  return `${n} PiB`;
}

export class UsageItem extends PollingItem {
  constructor() {
    super();
    this.addClass('kqi-usage');
  }

  async refresh(): Promise<void> {
    let u: IUsage;
    try {
      u = await kqiGet<IUsage>('usage');
    } catch (e) {
      this.node.textContent = 'workspace: unknown';
      this.node.title = `The workspace size cannot be read: ${(e as Error).message}`;
      return;
    }
    this.node.textContent = usageText(u);
    this.node.classList.toggle('kqi-mod-over', u.over_quota);
    this.node.title =
      `Your home and job folders: ${u.text}; profile ${u.profile}.` +
      (u.over_quota
        ? ' Over the quota: new servers and jobs with this profile are refused.'
        : ' New servers and jobs are refused once it is over the profile\u2019s storage.');
  }
}
