/**
 * `natsbind rotate --config F --binding B [--project ID] [--environment E] [--role R] [--emergency]`
 * (local mode): starts the rotation phases of src/rotation/ at once for the binding's accounts (or
 * one project, environment, role), and waits until the new keys issue. With --emergency every key
 * of the role goes at once (a leak) and a fresh key is published: the command reports how many
 * connections the servers showed on the removed keys just before (they are closed).
 */
import { parseArgs } from "node:util";
import { covers, satisfied, type RotationTrigger } from "../rotation/phases.ts";
import { RequestFiles } from "../rotation/request-files.ts";
import { StatusFiles } from "../store/status-files.ts";
import { parseDuration } from "../units.ts";
import { applyRequest, localBinding, managedSlots } from "./slot-requests.ts";
import { UsageError } from "./usage.ts";

export async function rotateCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string", default: "natsbind.yaml" },
      binding: { type: "string" },
      project: { type: "string" },
      environment: { type: "string" },
      role: { type: "string" },
      emergency: { type: "boolean", default: false },
      timeout: { type: "string", default: "2m" },
    },
  });
  if (!values.binding) throw new UsageError("rotate: --binding NAME is required");
  if (values.project !== undefined && !/^[1-9][0-9]{0,15}$/.test(values.project))
    throw new UsageError(
      `rotate: --project ${JSON.stringify(values.project.slice(0, 40))} is not a project id`,
    );
  if (values.environment !== undefined && values.project === undefined)
    throw new UsageError("rotate: --environment needs --project");
  const timeout = parseDuration(values.timeout, 3_600_000);
  if ("problem" in timeout) throw new UsageError(`rotate: --timeout ${timeout.problem}`);
  const lb = await localBinding(values.config, values.binding, "rotate");
  const roles = lb.binding.spec.roles.map((r) => r.name);
  if (values.role !== undefined && !roles.includes(values.role))
    throw new UsageError(
      `rotate: binding ${lb.key} has no role ${JSON.stringify(values.role.slice(0, 63))} (roles: ${roles.join(", ") || "none"})`,
    );

  const trigger: RotationTrigger = {
    at: Date.now(),
    emergency: values.emergency,
    ...(values.project !== undefined ? { projectId: Number(values.project) } : {}),
    ...(values.environment !== undefined ? { environment: values.environment } : {}),
    ...(values.role !== undefined ? { role: values.role } : {}),
  };
  await new RequestFiles(lb.config.keys.directory).add(lb.key, { trigger });

  // Done when every covered role key is newer than the trigger and issuing (activation happens only
  // after every server acked the JWT listing it); an emergency also when the removed keys' seeds
  // are gone (forget() runs only after the push without them was acked).
  const covered = async () =>
    (await managedSlots(lb.config, lb.key)).flatMap((slot) =>
      Object.keys(slot.roles)
        .filter((role) => covers(trigger, slot, role))
        .map((role) => ({ slot, role })),
    );
  const done = async (): Promise<boolean> =>
    (await covered()).every(
      ({ slot, role }) =>
        (slot.rotation?.[role]?.activeSince ?? -1) >= trigger.at &&
        (!trigger.emergency ||
          (satisfied(trigger, slot.rotation?.[role]) && (slot.discard ?? []).length === 0)),
    );
  await applyRequest(lb, done, { timeoutMs: timeout.value, progress: (line) => console.error(line) });

  const rows = await covered();
  for (const { slot, role } of rows) {
    const env = slot.ref.environment !== undefined ? ` (${slot.ref.environment})` : "";
    console.log(
      `project ${slot.ref.projectId}${env}  account ${slot.account}  role ${role}  key ${slot.roles[role]}`,
    );
  }
  console.log(
    `${rows.length} role key(s) ${trigger.emergency ? "replaced at once" : "rotated (old keys retire after the overlap)"}`,
  );
  if (trigger.emergency) {
    const status = await new StatusFiles(lb.config.state.directory).read(lb.key);
    const last = status?.rotation?.lastEmergency;
    if (last && Date.parse(last.time) >= trigger.at - 1000)
      console.log(`${last.connectionsClosed} connection(s) on the removed keys were closed`);
  }
}
