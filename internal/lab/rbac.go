package lab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/flatnet-io/flatnet/deploy"
)

// applyRBAC creates or updates the objects of deploy/rbac.yaml.
func applyRBAC(ctx context.Context, c *kubernetes.Clientset) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(deploy.RBAC)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return err
		}
		if err := applyOne(ctx, c, obj); err != nil {
			return err
		}
	}
}

func applyOne(ctx context.Context, c *kubernetes.Clientset, obj any) error {
	var err error
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		if _, err = c.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
			var cur *rbacv1.ClusterRole
			if cur, err = c.RbacV1().ClusterRoles().Get(ctx, o.Name, metav1.GetOptions{}); err == nil {
				cur.Rules = o.Rules
				_, err = c.RbacV1().ClusterRoles().Update(ctx, cur, metav1.UpdateOptions{})
			}
		}
	case *rbacv1.ClusterRoleBinding:
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	default:
		return fmt.Errorf("unexpected object %T in deploy/rbac.yaml", obj)
	}
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}
