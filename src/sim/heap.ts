// A binary min-heap of simulator events ordered by (time, insertion order), so runs are
// deterministic: equal times fire in the order they were scheduled.

export interface Scheduled<T> {
  time: number;
  order: number;
  item: T;
}

export class EventHeap<T> {
  private readonly items: Scheduled<T>[] = [];
  private nextOrder = 0;

  get size(): number {
    return this.items.length;
  }

  push(time: number, item: T): void {
    const node: Scheduled<T> = { time, order: this.nextOrder++, item };
    const items = this.items;
    items.push(node);
    let index = items.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      if (!less(node, items[parent] as Scheduled<T>)) break;
      items[index] = items[parent] as Scheduled<T>;
      index = parent;
    }
    items[index] = node;
  }

  pop(): Scheduled<T> | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    let index = 0;
    const length = items.length;
    while (true) {
      const left = 2 * index + 1;
      if (left >= length) break;
      const right = left + 1;
      const child = right < length && less(items[right] as Scheduled<T>, items[left] as Scheduled<T>) ? right : left;
      if (!less(items[child] as Scheduled<T>, last)) break;
      items[index] = items[child] as Scheduled<T>;
      index = child;
    }
    items[index] = last;
    return top;
  }

  peekTime(): number | undefined {
    return this.items[0]?.time;
  }
}

function less<T>(a: Scheduled<T>, b: Scheduled<T>): boolean {
  return a.time < b.time || (a.time === b.time && a.order < b.order);
}
