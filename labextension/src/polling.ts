/**
 * A status-bar item that asks the server again every `interval` seconds (set from the
 * extension's settings): the auto-stop forecast and the workspace size both are one.
 */
import { Widget } from '@lumino/widgets';

export abstract class PollingItem extends Widget {
  /** Ask now, then every `seconds`. */
  set interval(seconds: number) {
    window.clearInterval(this.pollTimer);
    this.pollTimer = window.setInterval(() => void this.refresh(), seconds * 1000);
    void this.refresh();
  }

  dispose(): void {
    window.clearInterval(this.pollTimer);
    super.dispose();
  }

  abstract refresh(): Promise<void>;

  private pollTimer = 0;
}
