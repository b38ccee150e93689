// Fixed, TEST-ONLY keys so generated claims can be compared with golden files. They were generated
// for this file, sign nothing real, and are public by being here. eslint lets only test/unit
// import this file (not src/, scripts/, bench/, test/support or test/integration), and the package
// and the image ship only dist/ (compiled from src/).
import { NKeyPair } from "../../src/nats/keys.ts";

export const fixedKeys = {
  operator: () => NKeyPair.fromSeed("SOAOWL5CBGJCIJHZJOVF6GPUWWZ5JJLC6ZOB24YIQEVQTCDUQTIUKQH7P4"),
  operatorSigning: () => NKeyPair.fromSeed("SOAOTVGSHCUEP6KWE7DAO52OAJXHSAO64QQNIFAYD5PWLCPERMRV77TXEE"),
  account: () => NKeyPair.fromSeed("SAALVQ5KIPI2Z53VTRPTHA3NL7X6NG3IYLBSMMRULUH6U7TWL5UG5BUCDA"),
  accountSigning: () => NKeyPair.fromSeed("SAAIAYFCSUVM5WWKKFLECVVAHTSOBKHJN7X3SHNT6COFICBJZGWWT3FMCM"),
  accountScoped: () => NKeyPair.fromSeed("SAAILD2QZXVBMOUQHBOISSBP3DAH7TPUPEKJFNQS7GDBOJDGUIKVGKEY5Y"),
  user: () => NKeyPair.fromSeed("SUAPOPHPHI4HOK6CD4JF3XURPHZVCDFBBOILYUR7QJGXOXGQ4ICU53Y4TE"),
};
