/**
 * Calls to the kqi routes of the user's server (api/kqi/...), through JupyterLab's
 * ServerConnection so the XSRF token and the base URL are right.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type JobStatus =
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'stopped'
  | 'lost';

export interface IJob {
  id: number;
  owner: string;
  name: string;
  status: JobStatus;
  command?: string;
  profile?: string;
  datasets?: string[];
  parent?: number | number[] | null;
  purpose?: string;
  exit_code?: number | null;
  created_at?: string | null;
  started_at?: string | null;
  finished_at?: string | null;
  continued_from?: number | null;
  message?: string | null;
}

export interface IDataset {
  name: string;
  description?: string;
  size?: number;
  file_count?: number;
}

export interface IProfile {
  name: string;
  description?: string;
  display_name?: string;
  default?: boolean;
}

export interface IActivity {
  started?: string;
  last_browser_access?: string | null;
  kernels?: { id: string; execution_state: string; last_activity: string }[];
  watched_processes?: { pid: number; name: string; cmdline: string[] }[];
  forecast?: { rule: string | null; at: string | null } | null;
}

export interface ILayout {
  kqi_root: string;
  datasets: string[];
  parent: string;
  inference: string;
  bindings: { kind?: string; name?: string; target: string; present: boolean }[];
  home_links: { name: string; status: string; target: string; reason: string }[];
}

export interface IUsage {
  user: string;
  bytes: number;
  files: number;
  measured_at: string;
  profile: string;
  quota: number;
  over_quota: boolean;
  text: string;
}

/** An error with the message the server gave (its JSON "message"), for the user to read. */
export class KqiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

const settings = (): ServerConnection.ISettings => ServerConnection.makeSettings();

export function kqiUrl(path: string): string {
  return URLExt.join(settings().baseUrl, 'api/kqi', path);
}

async function failure(response: Response): Promise<KqiError> {
  let message = `${response.status} ${response.statusText}`;
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      message = body.message || body.reason || message;
    } catch {
      if (text.trim()) {
        message = text.trim().slice(0, 500);
      }
    }
  } catch {
    // keep the status line
  }
  return new KqiError(response.status, message);
}

/** Send a request; resolve with the raw response when it is a success. */
export async function kqiFetch(
  path: string,
  init: RequestInit = {}
): Promise<Response> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(kqiUrl(path), init, settings());
  } catch (e) {
    throw new KqiError(0, `the server cannot be reached: ${e}`);
  }
  if (!response.ok) {
    throw await failure(response);
  }
  return response;
}

export async function kqiGet<T>(path: string): Promise<T> {
  return (await kqiFetch(path)).json();
}

export async function kqiPost<T>(path: string, body: unknown = {}): Promise<T> {
  const response = await kqiFetch(path, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  });
  const text = await response.text();
  return (text ? JSON.parse(text) : {}) as T;
}

/**
 * Stream a job's log (logs?follow=1) until the job ends or `signal` aborts; `onText` gets
 * each piece as it arrives.
 */
export async function followLog(
  id: number,
  onText: (text: string) => void,
  signal: AbortSignal
): Promise<void> {
  const response = await kqiFetch(`jobs/${id}/logs?follow=1`, { signal });
  if (!response.body) {
    onText(await response.text());
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      break;
    }
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
}

/** "42 min", "2 min 5 s", "12 s", "3 h 5 min": a duration as people read it. */
export function humanDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const min = Math.floor(s / 60);
  if (min < 10) {
    return `${min} min ${s % 60} s`;
  }
  if (min < 120) {
    return `${min} min`;
  }
  const h = Math.floor(min / 60);
  if (h < 48) {
    return `${h} h ${min % 60} min`;
  }
  return `${Math.floor(h / 24)} d`;
}

/** How long a job ran (or has run so far), or '' before it started. */
export function jobDuration(job: IJob, now = Date.now()): string {
  if (!job.started_at) {
    return '';
  }
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return humanDuration((end - Date.parse(job.started_at)) / 1000);
}

export const FINISHED: JobStatus[] = ['succeeded', 'failed', 'stopped', 'lost'];
